"""Operators with a fused (NPU / CUDA) path and a plain-PyTorch reference path."""

"""Checkpoint conversion: Hugging Face <-> Megatron (any TP/PP/EP/VPP layout), resharding.

Both sides meet in one canonical form: full (unsharded) tensors under megatron-core GPTModel
names with global layer and expert indices, read and written one group (embedding, one
layer, final norm + head) at a time.
"""

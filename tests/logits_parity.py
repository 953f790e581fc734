"""Logits parity measured against the logits' own scale: tiny random models give logits of
about 0.1, where an absolute bound of 1e-4 would let a 0.1% error through."""
import torch

# fp32 on CPU: the reference and ours differ only in summation order, about 1e-6 of the scale.
RELATIVE_TOLERANCE = 1e-5


def assert_logits_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    scale = reference.abs().max().item()
    error = (ours - reference).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * scale, (
        f"logits differ by {error:.3g}, over {RELATIVE_TOLERANCE:g} of their scale {scale:.3g}")

"""When the hand-written autograd Functions can be skipped."""
from __future__ import annotations

import torch


def records_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd would record an op on `tensors`. When it would not (generation,
    evaluation), the CPU operators run their forward math directly: an autograd Function's
    bookkeeping costs tens of microseconds per call on CPU, more than the elementwise work of
    a one-token decoding step."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)

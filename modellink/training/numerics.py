"""`--check-for-nan-in-loss-and-grad`: stop at the first non-finite loss or local gradient.

megatron-core's DDP checks each rank's local gradients before the data-parallel reduction
(`check_for_nan_in_grad`) and raises a RuntimeError naming the rank; the loss is checked here
in the loss function, before backward. The train loop adds the iteration to either.
"""
from __future__ import annotations

import torch

# megatron-core's rerun state machine phrases its NaN/Inf gradient rejections this way.
_GRAD_CHECK_MARKERS = ("found NaN in local grad norm", "found Inf in local grad norm")


class NonFiniteError(RuntimeError):
    """A NaN or Inf found by --check-for-nan-in-loss-and-grad; names the iteration and rank."""


def check_loss(loss_sum: torch.Tensor) -> None:
    if not torch.isfinite(loss_sum).item():
        raise NonFiniteError(f"rank {torch.distributed.get_rank()}: loss is "
                             f"{loss_sum.item()} (--check-for-nan-in-loss-and-grad)")


def is_grad_check_failure(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _GRAD_CHECK_MARKERS)

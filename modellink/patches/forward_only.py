"""Forward-only fast paths through megatron-core's tensor-parallel layers.

megatron-core sends every linear layer and every tensor-parallel region boundary through an
autograd Function, even when no gradient is recorded. Under torch.inference_mode each such
call costs ~20-30 us of bookkeeping on CPU, which for one-token decoding steps adds up to as
much as the matmuls themselves. With grad mode off these wrappers compute the same forward
directly; otherwise, and for sequence parallelism, they call megatron-core's own function.
"""
import functools
from typing import Any, Callable, List

import torch
import torch.nn.functional as F
from megatron.core.utils import get_tensor_model_parallel_group_if_none

from modellink.patches.registry import Patch

_LAYERS = "megatron.core.tensor_parallel.layers."


def _frozen_linear(original: Callable) -> Callable:
    @functools.wraps(original)
    def linear(input: torch.Tensor, weight: torch.Tensor, bias: Any = None, *args: Any,
               **kwargs: Any) -> torch.Tensor:
        if torch.is_grad_enabled() or args or kwargs.get("sequence_parallel"):
            return original(input, weight, bias, *args, **kwargs)
        # LinearWithFrozenWeight computes matmul(input, weight.t()) + bias: the same GEMM.
        return F.linear(input, weight, bias)

    return linear


def _copy_to_region(original: Callable) -> Callable:
    @functools.wraps(original)
    def copy(input_: torch.Tensor, group: Any = None) -> torch.Tensor:
        # The forward is the identity; only the backward communicates.
        return original(input_, group) if torch.is_grad_enabled() else input_

    return copy


def _single_rank_identity(original: Callable) -> Callable:
    """An all-reduce or all-gather over one tensor-parallel rank returns its input."""
    @functools.wraps(original)
    def collective(input_: torch.Tensor, group: Any = None) -> torch.Tensor:
        if torch.is_grad_enabled() or get_tensor_model_parallel_group_if_none(group).size() > 1:
            return original(input_, group)
        return input_

    return collective


def forward_only_patches() -> List[Patch]:
    reason = "megatron-core wraps no-grad forwards in autograd Functions (~25 us a call)"
    region = ("input_", "group")
    return [Patch(_LAYERS + name, wrapper, reason, wraps=True, params=params)
            for name, wrapper, params in (
        ("linear_with_frozen_weight", _frozen_linear,
         ("input", "weight", "bias", "sequence_parallel")),
        ("copy_to_tensor_model_parallel_region", _copy_to_region, region),
        ("reduce_from_tensor_model_parallel_region", _single_rank_identity, region),
        ("gather_from_tensor_model_parallel_region", _single_rank_identity, region),
    )]

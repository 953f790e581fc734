"""Gradient-accumulation fusion on the CPU backend (Megatron-LM's default, off with
`--no-gradient-accumulation-fusion`): a linear layer's weight gradient is added straight into
the DDP gradient buffer (`weight.main_grad`) by one `addmm_`.

megatron-core's fused path calls apex's `fused_weight_gradient_mlp_cuda` kernel and allocates
its dummy gradient with `torch.cuda.current_device()`, neither of which exists on a CPU; its
unfused path computes the weight gradient into a fresh tensor that the DDP hook then adds into
`main_grad` and frees: one more pass over every weight per step and a weight-sized allocation.
The replacement covers the layouts without sequence parallelism (those gather the input and
reduce-scatter its gradient inside the function) and with a gradient buffer in the weight's
dtype; everything else runs megatron-core's unfused path, which computes the same gradient.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from megatron.core import parallel_state

from modellink.patches.registry import Patch


class _LinearAccumulatingWeightGrad(torch.autograd.Function):
    """y = x W^T; backward: dx = dy W (all-reduced over TP for a column-parallel layer, as
    megatron-core's `allreduce_dgrad`), main_grad += dy^T x."""

    @staticmethod
    def forward(ctx: Any, input: torch.Tensor, weight: torch.Tensor,
                tp_group: Optional[torch.distributed.ProcessGroup]) -> torch.Tensor:
        ctx.save_for_backward(input, weight)
        # The parameter itself, for its buffer and flag: saved-tensor hooks (activation
        # offloading, the planner's probes) may unpack a saved weight as another tensor object.
        ctx.parameter = weight
        ctx.tp_group = tp_group
        return torch.matmul(input, weight.t())

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor):
        input, weight = ctx.saved_tensors
        grad_input = grad_output.matmul(weight)
        handle = None
        if ctx.tp_group is not None:
            handle = torch.distributed.all_reduce(grad_input, group=ctx.tp_group, async_op=True)
        ctx.parameter.main_grad.addmm_(grad_output.reshape(-1, grad_output.shape[-1]).t(),
                                       input.reshape(-1, input.shape[-1]))
        # As megatron-core's fused path: the DDP hook must still fire (it marks the bucket
        # ready), so the weight gets a gradient, never read, that the hook drops.
        ctx.parameter.grad_added_to_main_grad = True
        if handle is not None:
            handle.wait()
        return grad_input, torch.empty_like(weight), None


def _fusable(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
             sequence_parallel: bool, grad_output_buffer: Optional[List[torch.Tensor]]) -> bool:
    main_grad = getattr(weight, "main_grad", None)
    return (bias is None and not sequence_parallel and grad_output_buffer is None
            and weight.requires_grad and torch.is_grad_enabled()
            and hasattr(weight, "grad_added_to_main_grad")
            # A tied embedding's gradient arrives from two places; megatron-core zeroes it.
            and not getattr(weight, "zero_out_wgrad", False)
            and main_grad is not None and main_grad.dtype == input.dtype == weight.dtype)


def accumulating_linear(original: Callable) -> Callable:
    def linear_with_grad_accumulation_and_async_allreduce(
            input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
            gradient_accumulation_fusion: bool, allreduce_dgrad: bool,
            sequence_parallel: bool, grad_output_buffer: Optional[List[torch.Tensor]] = None,
            wgrad_deferral_limit: Optional[int] = 0, async_grad_allreduce: Optional[bool] = None,
            tp_group: Optional[torch.distributed.ProcessGroup] = None) -> torch.Tensor:
        if async_grad_allreduce is not None:  # megatron-core's deprecated alias
            allreduce_dgrad = async_grad_allreduce
        if gradient_accumulation_fusion and _fusable(input, weight, bias, sequence_parallel,
                                                     grad_output_buffer):
            if allreduce_dgrad and tp_group is None:
                tp_group = parallel_state.get_tensor_model_parallel_group()
            return _LinearAccumulatingWeightGrad.apply(input, weight,
                                                       tp_group if allreduce_dgrad else None)
        return original(input, weight, bias, False, allreduce_dgrad, sequence_parallel,
                        grad_output_buffer, wgrad_deferral_limit, None, tp_group)

    # megatron-core warns once through an attribute of the function it calls.
    linear_with_grad_accumulation_and_async_allreduce.warned = False
    return linear_with_grad_accumulation_and_async_allreduce


def grad_accumulation_patches() -> List[Patch]:
    reason = ("megatron-core's linear layers call this function by module path; its fused "
              "weight-gradient path needs apex's CUDA kernel")
    return [
        Patch("megatron.core.tensor_parallel.layers."
              "linear_with_grad_accumulation_and_async_allreduce", accumulating_linear, reason,
              group="cpu-backend", wraps=True,
              params=("input", "weight", "bias", "gradient_accumulation_fusion",
                      "allreduce_dgrad", "sequence_parallel", "grad_output_buffer",
                      "wgrad_deferral_limit", "async_grad_allreduce", "tp_group")),
        # megatron-core refuses gradient_accumulation_fusion when apex's kernel did not import.
        Patch("megatron.core.tensor_parallel.layers._grad_accum_fusion_available", True,
              "the fusion above needs no apex kernel", group="cpu-backend"),
    ]

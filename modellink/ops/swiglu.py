"""SwiGLU activation for `--use-fused-swiglu`: silu(a) * b, where a, b are the two halves of the
last dimension of linear_fc1's output (megatron-core's gated-linear-unit layout).

Paths: reference (megatron-core's unfused glu math); npu -> torch_npu.npu_swiglu; cuda ->
megatron-core's SwiGLUFunction (torch.compile'd forward and backward, which keeps only the input);
cpu -> `_SwiGLUFunction`, one autograd node in eager ops that also keeps silu(a).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from modellink.ops.grad_mode import records_grad

ActivationFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SwiGLUImpl:
    name: str
    fn: ActivationFn


def swiglu_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


class _SwiGLUFunction(torch.autograd.Function):
    """Keeps the input and silu(a), as the reference's autograd does, but as one node whose
    backward writes both halves of the gradient in place with torch's silu_backward kernel.
    Keeping silu(a) costs one [s, b, ffn] tensor per layer and saves recomputing it in backward:
    on CPU the silu over the strided half of fc1's output is the costliest elementwise pass of
    the MLP (measured 0.26 of its 2.4 ms forward and backward at [256, 4, 2 x 704] fp32)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.chunk(x, 2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(x, activated)
        return activated * up

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        x, activated = ctx.saved_tensors
        gate, up = torch.chunk(x, 2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_gate, grad_up = torch.chunk(grad_x, 2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward(grad * up, gate, grad_input=grad_gate)
        return grad_x


def swiglu_cpu(x: torch.Tensor) -> torch.Tensor:
    return _SwiGLUFunction.apply(x) if records_grad(x) else swiglu_reference(x)


def swiglu_cuda(x: torch.Tensor) -> torch.Tensor:
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    return bias_swiglu_impl(x, None)


def swiglu_npu(x: torch.Tensor) -> torch.Tensor:
    import torch_npu

    # npu_swiglu(input, dim=-1): swish(A) * B with A the first half; input must be contiguous.
    return torch_npu.npu_swiglu(x.contiguous(), dim=-1)


_FUSED = {
    "npu": SwiGLUImpl("npu_swiglu", swiglu_npu),
    "cuda": SwiGLUImpl("megatron compiled swiglu", swiglu_cuda),
    "cpu": SwiGLUImpl("swiglu autograd function", swiglu_cpu),
}
REFERENCE = SwiGLUImpl("reference", swiglu_reference)


def select_swiglu(device: str, fused: bool) -> SwiGLUImpl:
    """The implementation `--use-fused-swiglu` (fused=True) or its absence selects."""
    return _FUSED[device] if fused else REFERENCE

"""RMSNorm and LayerNorm modules for megatron-core layer specs (`--use-fused-rmsnorm`).

megatron-core's torch-backed norm refuses sequence parallelism, and its fused norms need apex
or Transformer Engine; these modules work with both and mark their weights for the
sequence-parallel gradient all-reduce.

RMSNorm paths: reference (fp32 statistics, as Hugging Face's Llama); npu -> torch_npu.npu_rms_norm;
cuda -> torch's rms_norm (a fused CUDA kernel with fused backward); cpu -> `_RMSNormFunction`, one
autograd node that keeps only the input and the per-row 1/rms for backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.ops.grad_mode import records_grad

NormFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class RMSNormImpl:
    name: str
    fn: NormFn


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # fp32 statistics as in Hugging Face's Llama, so bf16 runs match converted checkpoints.
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


class _RMSNormFunction(torch.autograd.Function):
    """The reference's math with a hand-written backward. Autograd of the reference keeps x in
    fp32 and the normalised tensor as well; this keeps x (in its own dtype) and one float per
    row. With g' = grad * weight and n = x * rstd, dx = rstd * (g' - n * mean(g' * n)) =
    rstd * g' - x * rstd^3 * mean(g' * x) and dweight = sum over rows of grad * n: both
    reductions are matrix-vector products over the one tensor grad * x, so the backward writes
    two full-size tensors (grad * x, then dx in place) where the textbook form writes five, and
    never materialises n (measured on CPU, fp32: 0.14 against 0.16 ms for [1024, 256], 2.1
    against 2.2 ms for [512, 4096])."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return weight * (x32 * rstd).to(x.dtype)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        hidden, x32, row_rstd = x.shape[-1], x.float(), rstd.view(-1)
        grad_times_x = (grad.float() * x32).reshape(-1, hidden)
        grad_weight = torch.mv(grad_times_x.t(), row_rstd)
        # rstd^3 * mean(g' * x), with g' * x summed as (grad * x) @ weight.
        coefficient = torch.mv(grad_times_x, weight.float()).mul_(row_rstd.pow(3)).div_(hidden)
        grad_x = (grad * weight).float().mul_(rstd).addcmul_(x32, coefficient.view_as(rstd),
                                                             value=-1)
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), None


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not records_grad(x, weight):
        if x.dtype == torch.float32 == weight.dtype:
            # One kernel, bit-identical to the reference in fp32 (checked over hidden sizes
            # 16..14336); in half precision it rounds differently, so the reference runs.
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        return rms_norm_reference(x, weight, eps)  # the Function's forward, without its node
    return _RMSNormFunction.apply(x, weight, eps)


def rms_norm_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rms_norm_npu(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    import torch_npu

    # npu_rms_norm(self, gamma, epsilon=1e-06) -> (y, rstd); gamma must share x's dtype.
    return torch_npu.npu_rms_norm(x, weight.to(x.dtype), epsilon=eps)[0]


_FUSED = {
    "npu": RMSNormImpl("npu_rms_norm", rms_norm_npu),
    "cuda": RMSNormImpl("torch fused rms_norm", rms_norm_cuda),
    "cpu": RMSNormImpl("rmsnorm autograd function", rms_norm_cpu),
}
REFERENCE = RMSNormImpl("reference", rms_norm_reference)


def select_rms_norm(device: str, fused: bool) -> RMSNormImpl:
    """The implementation `--use-fused-rmsnorm` (fused=True) or its absence selects."""
    return _FUSED[device] if fused else REFERENCE


def _output_dtype(config: TransformerConfig) -> Optional[torch.dtype]:
    """With `--fp32-residual-connection` the norms take the fp32 residual stream, compute in
    fp32 and return the params dtype the layers after them expect (None: the input's dtype)."""
    return config.params_dtype if config.fp32_residual_connection else None


class RMSNorm(torch.nn.Module):
    """With `config.layernorm_zero_centered_gamma` (`--add-rmsnorm-offset`, Gemma) the weight
    is stored centred on zero and the norm scales by (1 + weight)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5,
                 impl: RMSNormImpl = REFERENCE) -> None:
        super().__init__()
        self.eps = eps
        self.zero_centered = config.layernorm_zero_centered_gamma
        init = torch.zeros if self.zero_centered else torch.ones
        self.weight = torch.nn.Parameter(init(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)
        self._fn = impl.fn
        self._output_dtype = _output_dtype(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._output_dtype is not None:
            return self._fn(x, self._weight().to(x.dtype), self.eps).to(self._output_dtype)
        if self.zero_centered:
            return self._fn(x, self._weight(), self.eps).to(x.dtype)
        return self._fn(x, self.weight, self.eps)

    def _weight(self) -> torch.Tensor:
        # 1 + weight in fp32 as Gemma computes it: in bf16 a small weight would round away.
        return self.weight.float() + 1 if self.zero_centered else self.weight


class LayerNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for param in (self.weight, self.bias):
            setattr(param, "sequence_parallel", config.sequence_parallel)
        self._output_dtype = _output_dtype(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._output_dtype is not None:
            return F.layer_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.bias.to(x.dtype),
                                self.eps).to(self._output_dtype)
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)

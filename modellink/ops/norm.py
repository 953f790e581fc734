"""RMSNorm and LayerNorm modules for megatron-core layer specs.

megatron-core's torch-backed norm refuses sequence parallelism, and its fused norms need apex
or Transformer Engine; these modules work with both and mark their weights for the
sequence-parallel gradient all-reduce.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # fp32 statistics as in Hugging Face's Llama, so bf16 runs match converted checkpoints.
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if x.device.type == "npu":
        import torch_npu

        return torch_npu.npu_rms_norm(x, weight, epsilon=eps)[0]
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5,
                 use_fused: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)
        self._impl = rms_norm_fused if use_fused else rms_norm_reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._impl(x, self.weight, self.eps)


class LayerNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
        for param in (self.weight, self.bias):
            setattr(param, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


"""The fused kernels behind attention_lse's unmasked ("full") and aligned-causal blocks, one
(forward, backward) pair per device, so ring attention runs each block on the device's own
attention kernel rather than materialising the scores.

Every pair has one contract. forward(q, k, v, causal, scale) -> (out in q's dtype, lse float32
[b, heads, sq]); backward(grad_out, q, k, v, out, lse, causal, scale) -> float32 (dQ, dK, dV),
where out and lse are the WHOLE attention's, so that the kernel's recomputed probabilities
exp(S * scale - lse) are the block's columns of the global softmax. Tensors are [b, heads, s, d]
views with a unit last stride; K/V carry num_query_groups heads. A causal block has sq == skv and
key j visible to query i iff j <= i, which every kernel's causal mode agrees on for square blocks.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from typing import Callable, Dict, Tuple

import torch
from packaging.version import Version

from modellink.ops.attention_npu import COMPRESSED_MASK_SIZE, causal_mask

Forward = Callable[..., Tuple[torch.Tensor, torch.Tensor]]
Backward = Callable[..., Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
_HALF = (torch.float16, torch.bfloat16)
# npu_fusion_attention's softmax_max / softmax_sum are [b, heads, sq, 8]: one value repeated.
_NPU_STAT_WIDTH = 8
# The memory-efficient kernel keeps its log-sum-exp rows in tiles of this many queries.
_EFFICIENT_LSE_ALIGN = 32


def _float(grads: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(grad.float() for grad in grads[:3])


# CPU: torch's flash kernel for CPU (GQA native).

def _cpu_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, scale=scale)
    return out, lse


def _cpu_flash_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, causal: bool,
                        scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _float(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_out, q, k, v, out, lse, 0.0, causal, scale=scale))


# NPU: torch_npu.npu_fusion_attention and npu_fusion_attention_grad in layout BNSD (GQA native).
# Its softmax statistics give lse = softmax_max + log(softmax_sum); fed back as
# (softmax_max = global lse, softmax_sum = 1) they make the grad's probabilities the global ones.

@functools.lru_cache(maxsize=None)
def _compressed_causal_mask(device: torch.device) -> torch.Tensor:
    return causal_mask(COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, device)


def _npu_mask(causal: bool, device: torch.device) -> dict:
    # sparse_mode 2 (leftUpCausal) takes the compressed 2048 x 2048 mask; 0 with no mask is full.
    if causal:
        return dict(atten_mask=_compressed_causal_mask(device), sparse_mode=2)
    return dict(atten_mask=None, sparse_mode=0)


def _npu_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                 scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    import torch_npu

    out, softmax_max, softmax_sum = torch_npu.npu_fusion_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), q.shape[1], "BNSD", scale=scale,
        keep_prob=1.0, **_npu_mask(causal, q.device))[:3]
    return out, softmax_max[..., 0] + torch.log(softmax_sum[..., 0])


def _npu_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  out: torch.Tensor, lse: torch.Tensor, causal: bool, scale: float
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    import torch_npu

    softmax_max = lse.unsqueeze(-1).expand(*lse.shape, _NPU_STAT_WIDTH).contiguous()
    return _float(torch_npu.npu_fusion_attention_grad(
        q.contiguous(), k.contiguous(), v.contiguous(), grad_out.contiguous(), q.shape[1], "BNSD",
        softmax_max=softmax_max, softmax_sum=torch.ones_like(softmax_max),
        attention_in=out.contiguous(), scale_value=scale, keep_prob=1.0,
        **_npu_mask(causal, q.device)))


# CUDA, fp16/bf16 with the flash-attn package (2.7 or later: these private entry points took
# other arguments before): _flash_attn_forward / _flash_attn_backward in layout [b, s, heads, d],
# GQA native.

@functools.lru_cache(maxsize=None)
def flash_attn_available() -> bool:
    if importlib.util.find_spec("flash_attn") is None:
        return False
    return Version(importlib.metadata.version("flash-attn")) >= Version("2.7")


def _flash_attn_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                        scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from flash_attn.flash_attn_interface import _flash_attn_forward

    out, lse = _flash_attn_forward(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0,
        softmax_scale=scale, causal=causal, window_size_left=-1, window_size_right=-1,
        softcap=0.0, alibi_slopes=None, return_softmax=False)[:2]
    return out.transpose(1, 2), lse


def _flash_attn_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, causal: bool,
                         scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from flash_attn.flash_attn_interface import _flash_attn_backward

    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    grads = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v)]
    _flash_attn_backward(
        grad_out.transpose(1, 2), q, k, v, out.transpose(1, 2), lse.contiguous(), *grads,
        dropout_p=0.0, softmax_scale=scale, causal=causal, window_size_left=-1,
        window_size_right=-1, softcap=0.0, alibi_slopes=None, deterministic=False)
    return _float(tuple(grad.transpose(1, 2) for grad in grads))


# CUDA otherwise: torch's memory-efficient kernel, which wants as many K/V heads as query heads.

def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t if t.shape[1] == heads else t.repeat_interleave(heads // t.shape[1], dim=1)


def _sum_heads(grad: torch.Tensor, groups: int) -> torch.Tensor:
    b, heads, s, d = grad.shape
    return grad.float().view(b, groups, heads // groups, s, d).sum(2)


def _efficient_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                       scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    heads = q.shape[1]
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, _repeat_heads(k, heads), _repeat_heads(v, heads), None, True, 0.0, causal,
        scale=scale)[:2]
    return out, lse[..., :q.shape[2]]


def _efficient_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, causal: bool,
                        scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    (b, heads, sq, _), groups = q.shape, k.shape[1]
    rows = -(-sq // _EFFICIENT_LSE_ALIGN) * _EFFICIENT_LSE_ALIGN
    padded = lse.new_zeros(b, heads, rows)
    padded[..., :sq] = lse
    no_dropout = torch.empty((), dtype=torch.int64)  # the forward's seed/offset without dropout
    grad_q, grad_k, grad_v, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad_out, q, _repeat_heads(k, heads), _repeat_heads(v, heads), None, out, padded,
        no_dropout, no_dropout, 0.0, [True, True, True, False], causal, scale=scale)
    return grad_q.float(), _sum_heads(grad_k, groups), _sum_heads(grad_v, groups)


KERNELS: Dict[str, Tuple[Forward, Backward]] = {
    "cpu-flash": (_cpu_flash_forward, _cpu_flash_backward),
    "npu": (_npu_forward, _npu_backward),
    "flash-attn": (_flash_attn_forward, _flash_attn_backward),
    "cuda-efficient": (_efficient_forward, _efficient_backward),
}


def fused_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The KERNELS entry for full and causal blocks of `dtype` on `device`; "" when the
    device has none here (then attention_lse runs its reference math)."""
    if device.type == "cpu":
        return "cpu-flash"
    if device.type == "npu":
        return "npu"
    if device.type == "cuda":
        return "flash-attn" if dtype in _HALF and flash_attn_available() else "cuda-efficient"
    return ""

"""Rotary position embedding applied to query/key for `--use-fused-rotary-pos-emb`.

`freqs` is megatron-core's rotary embedding, angles of shape [s, 1, 1, rot_dim] (the two halves
repeat), and `mscale` YaRN's attention factor; both as megatron-core's attention receives them.

Paths: reference -> megatron-core's `_apply_rotary_pos_emb_bshd`; npu -> torch_npu.npu_rotary_mul
(SBND input with S11D cos/sin); cuda -> flash-attn's Triton rotary kernel when flash-attn is
installed, else `_RotaryMul`; cpu -> `_RotaryMul`, one autograd node whose backward is the same
rotation with -sin (nothing but cos/sin kept for backward).

`_RotaryMul` works on the two halves of the rotated channels in place of rotate_half's negation
and concatenation (a measured ~10% of a CPU training step): with half-width cos/sin c, s,
y1 = t1*c - t2*s and y2 = t2*c + t1*s, each written straight into its half of the output; the
products and sums are the reference's, so the result is bit-identical to it. The output is laid
out in memory as [b, heads, s, d] (a [s, b, heads, d] view of it), the layout SDPA reads, so the
attention after it does not copy query and key again.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Tuple

import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from modellink.ops.grad_mode import records_grad

RotaryFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class RotaryImpl:
    name: str
    fn: RotaryFn


def cos_sin(freqs: torch.Tensor, mscale: float, dtype: torch.dtype
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    # Same rounding as megatron-core: scale in fp32, then cast to the activation dtype. The
    # no-op scale and cast are skipped: per-op overhead dominates a one-token decoding step.
    def table(values: torch.Tensor) -> torch.Tensor:
        values = values * mscale if mscale != 1.0 else values
        return values if values.dtype == dtype else values.to(dtype)

    return table(torch.cos(freqs)), table(torch.sin(freqs))


def _split_rotary(t: torch.Tensor, freqs: torch.Tensor, rotate: Callable[[torch.Tensor],
                  torch.Tensor]) -> torch.Tensor:
    """Rotate the first rot_dim channels (all of them unless --rotary-percent < 1)."""
    rot_dim = freqs.shape[-1]
    if rot_dim == t.shape[-1]:
        return rotate(t)
    return torch.cat((rotate(t[..., :rot_dim]), t[..., rot_dim:]), dim=-1)


def rotary_reference(t: torch.Tensor, freqs: torch.Tensor, mscale: float) -> torch.Tensor:
    return _apply_rotary_pos_emb_bshd(t, freqs, mscale=mscale)


def _half_tables(freqs: torch.Tensor, mscale: float, dtype: torch.dtype
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    # The angles repeat over the two halves of rot_dim: one half is enough.
    return cos_sin(freqs[..., : freqs.shape[-1] // 2], mscale, dtype)


def _attention_layout(t: torch.Tensor) -> torch.Tensor:
    """An empty [s, b, heads, d] tensor whose memory is [b, heads, s, d]-contiguous."""
    s, b, heads, dim = t.shape
    return t.new_empty(b, heads, s, dim).permute(2, 0, 1, 3)


def _rotate_halves(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float,
                   out: torch.Tensor) -> torch.Tensor:
    """[t1*c - sign*t2*s, t2*c + sign*t1*s] over the first 2 * c.shape[-1] channels, written
    into `out`; the rest pass through. sign=1 rotates, sign=-1 is its transpose (backward)."""
    half = cos.shape[-1]
    first, second = t[..., :half], t[..., half: 2 * half]
    torch.mul(first, cos, out=out[..., :half])
    torch.mul(second, cos, out=out[..., half: 2 * half])
    if sign > 0:
        out[..., :half].sub_(second * sin)
        out[..., half: 2 * half].add_(first * sin)
    else:
        out[..., :half].add_(second * sin)
        out[..., half: 2 * half].sub_(first * sin)
    if 2 * half < t.shape[-1]:
        out[..., 2 * half:].copy_(t[..., 2 * half:])
    return out


class _RotaryMul(torch.autograd.Function):
    """y = t*cos + R(t)*sin with R = rotate_half. R is linear with R^T = -R, and sin repeats over
    the two halves, so dL/dt = g*cos - R(g)*sin: the same rotation with -sin."""

    @staticmethod
    def forward(ctx: object, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate_halves(t, cos, sin, 1.0, _attention_layout(t))

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate_halves(grad, cos, sin, -1.0, torch.empty_like(grad)), None, None


def rotary_autograd(t: torch.Tensor, freqs: torch.Tensor, mscale: float) -> torch.Tensor:
    cos, sin = _half_tables(freqs, mscale, t.dtype)
    if not records_grad(t):
        return _rotate_halves(t, cos, sin, 1.0, _attention_layout(t))
    return _RotaryMul.apply(t, cos, sin)


def rotary_flash_attn(t: torch.Tensor, freqs: torch.Tensor, mscale: float) -> torch.Tensor:
    from flash_attn.layers.rotary import apply_rotary_emb

    # flash-attn wants [b, s, heads, dim] and cos/sin of [s, rot_dim / 2] (one half); this is
    # the call megatron-core's own apply_rotary_pos_emb_with_cos_sin makes.
    half = freqs[:, 0, 0, : freqs.shape[-1] // 2]
    cos, sin = cos_sin(half, mscale, t.dtype)
    return apply_rotary_emb(t.transpose(0, 1), cos, sin, False).transpose(0, 1)


def rotary_npu(t: torch.Tensor, freqs: torch.Tensor, mscale: float) -> torch.Tensor:
    import torch_npu

    # npu_rotary_mul(x, r1, r2): 4-D x in SBND with r1 = cos, r2 = sin in S11D, same dtype.
    cos, sin = cos_sin(freqs, mscale, t.dtype)
    return _split_rotary(t, freqs, lambda x: torch_npu.npu_rotary_mul(x, cos, sin))


def _cuda_impl() -> RotaryImpl:
    if importlib.util.find_spec("flash_attn") is not None:
        return RotaryImpl("flash-attn rotary kernel", rotary_flash_attn)
    return RotaryImpl("rotary autograd function", rotary_autograd)


REFERENCE = RotaryImpl("reference", rotary_reference)


def select_rotary(device: str, fused: bool) -> RotaryImpl:
    """The implementation `--use-fused-rotary-pos-emb` (fused=True) or its absence selects."""
    if not fused:
        return REFERENCE
    if device == "npu":
        return RotaryImpl("npu_rotary_mul", rotary_npu)
    if device == "cuda":
        return _cuda_impl()
    return RotaryImpl("rotary autograd function", rotary_autograd)

"""The torch_npu.npu_fusion_attention call behind `--use-flash-attn` on Ascend.

Documented signature (torch_npu API reference):
    npu_fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None,
        atten_mask=None, scale=1., keep_prob=1., pre_tockens=2147483647,
        next_tockens=2147483647, inner_precise=0, prefix=None, actual_seq_qlen=None,
        actual_seq_kvlen=None, sparse_mode=0, gen_mask_parallel=True, sync=False)
        -> (attention_out, softmax_max, softmax_sum, softmax_out, seed, offset, numels)
input_layout is one of SBH, BSH, BSND, BNSD; key/value may carry fewer heads than the query
(GQA, N1 % N2 == 0), so K/V are passed with their own head count and never repeated.
atten_mask is bool, True = masked out, shaped [S, S] or [B|1, 1, S, S]; sparse modes 2, 3 and 4
take the optimised (compressed) 2048 x 2048 upper-triangular mask instead. In modes 0 and 4 query
row i attends keys [i - pre_tockens, i + next_tockens], counted from the top-left corner.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from modellink.argument_errors import ArgumentError

COMPRESSED_MASK_SIZE = 2048
# Modes whose mask is the compressed causal mask rather than a full S x S one.
COMPRESSED_MASK_MODES = (2, 3, 4)


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """megatron-core's [s, b, heads, dim] in the layout npu_fusion_attention was told."""
    s, b, n, d = t.shape
    if layout == "SBH":
        return t.reshape(s, b, n * d)
    if layout == "BSH":
        return t.transpose(0, 1).reshape(b, s, n * d)
    if layout == "BSND":
        return t.transpose(0, 1).contiguous()
    if layout == "BNSD":
        return t.permute(1, 2, 0, 3).contiguous()
    raise ArgumentError(f"--shape-order {layout} is not one of SBH, BSH, BSND, BNSD")


def from_layout(out: torch.Tensor, layout: str, s: int, b: int) -> torch.Tensor:
    """The kernel's output (query's layout) back to megatron-core's [s, b, heads * dim]."""
    if layout == "SBH":
        return out.reshape(s, b, -1)
    if layout == "BSH":
        return out.transpose(0, 1).reshape(s, b, -1)
    if layout == "BSND":
        return out.transpose(0, 1).reshape(s, b, -1)
    return out.permute(2, 0, 1, 3).reshape(s, b, -1)


def causal_mask(sq: int, skv: int, device: torch.device) -> torch.Tensor:
    """True where a query (the last sq positions) would see the future."""
    return torch.ones(sq, skv, dtype=torch.bool, device=device).triu(skv - sq + 1)


def mask_arguments(sparse_mode: int, pre_tokens: int, next_tokens: int, window: Optional[int],
                   sq: int, skv: int, attention_mask: Optional[torch.Tensor],
                   device: torch.device, masks: Dict[tuple, torch.Tensor]) -> dict:
    """atten_mask / sparse_mode / pre_tockens / next_tockens for a causal (optionally windowed
    or packed-sample) self-attention. `masks` caches the constant masks per module."""
    # pre/next_tockens count from the top-left diagonal; queries here are the last sq positions.
    offset = skv - sq
    pre = (window if window is not None else pre_tokens) - offset
    next_tokens = next_tokens + offset
    if attention_mask is not None:
        # Packed samples: the batch's own mask (plus causality) in full, band via pre_tockens.
        atten = attention_mask.bool() | causal_mask(sq, skv, device)
        return dict(atten_mask=atten, sparse_mode=0, pre_tockens=pre, next_tockens=next_tokens)
    if sparse_mode == 2 and sq != skv:
        sparse_mode = 3  # leftUpCausal would hide the cache from a decode step; rightDown is causal
    if sparse_mode in COMPRESSED_MASK_MODES:
        key = (COMPRESSED_MASK_SIZE, COMPRESSED_MASK_SIZE, str(device))
    else:
        key = (sq, skv, str(device))
    if key not in masks:
        masks[key] = causal_mask(key[0], key[1], device)
    return dict(atten_mask=masks[key], sparse_mode=sparse_mode, pre_tockens=pre,
                next_tockens=next_tokens)


def npu_fusion_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                         layout: str, scale: float, keep_prob: float, mask_args: dict
                         ) -> torch.Tensor:
    """query [s, b, n, d], key/value [s, b, g, d] -> [s, b, n * d]."""
    import torch_npu

    s, b, heads = query.shape[0], query.shape[1], query.shape[2]
    q, k, v = (to_layout(t, layout) for t in (query, key, value))
    out = torch_npu.npu_fusion_attention(
        q, k, v, heads, layout, pse=None, padding_mask=None, scale=scale, keep_prob=keep_prob,
        inner_precise=0, **mask_args)[0]
    return from_layout(out, layout, s, b)

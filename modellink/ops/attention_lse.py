"""Attention over one block of keys that also returns each row's log-sum-exp, the merge of such
blocks, and a block's backward given the output and log-sum-exp of the WHOLE attention: the
pieces ring attention (ring_attention.py) is made of.

Tensors are [b, heads, s, d] (any strides with a unit last one: views of megatron-core's
[s, b, heads, d] work), K/V with their num_query_groups heads (GQA); the log-sum-exp is float32
[b, heads, sq], over the scaled scores, -inf for a row that sees no key of the block. A block is
one of three kinds: "full" (every query sees every key), "causal" (queries and keys are the same
positions, key j visible to query i iff j <= i) and "masked" (a bool `visible` [b or 1, sq, skv],
True where the query may attend).

Kernels, chosen by device, block kind and (on CUDA) dtype only (`block_kernel`): full and
causal blocks run the device's fused kernel (attention_lse_kernels.py): on CPU torch's flash
kernel for CPU, on NPU npu_fusion_attention / npu_fusion_attention_grad, on CUDA flash-attn's
kernels for fp16/bf16 when the package is installed, else torch's memory-efficient kernel.
Masked blocks, and every block on other devices, run the reference math (float32 softmax).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from modellink.ops.attention_lse_kernels import KERNELS, fused_kernel

BLOCK_KINDS = ("full", "causal", "masked")


def block_kernel(device: torch.device, kind: str, dtype: torch.dtype) -> str:
    """The kernel a block of `kind` and `dtype` runs on `device`: a name in
    attention_lse_kernels.KERNELS, or "reference"."""
    if kind not in BLOCK_KINDS:
        raise ValueError(f"unknown attention block kind {kind!r}")
    return (kind != "masked" and fused_kernel(device, dtype)) or "reference"


def _finite(lse: torch.Tensor) -> torch.Tensor:
    # A row that sees no key has lse -inf and all scores -inf: subtracting 0 keeps its
    # probabilities at exp(-inf) = 0 where -inf - (-inf) would give NaN.
    return lse.masked_fill(lse == -math.inf, 0.0)


def _grouped(query: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, heads, sq, d] -> [b, groups, rep * sq, d]: one group's query heads stacked along the
    rows, so its single K/V head serves them without being repeated."""
    b, heads, sq, dim = query.shape
    return query.reshape(b, groups, heads // groups * sq, dim)


def _reference_scores(query: torch.Tensor, key: torch.Tensor, kind: str,
                      visible: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """Scaled float32 scores [b, groups, rep, sq, skv], -inf where the query may not attend."""
    b, heads, sq, _ = query.shape
    groups, skv = key.shape[1], key.shape[2]
    scores = torch.matmul(_grouped(query, groups), key.transpose(-1, -2)).float() * scale
    scores = scores.view(b, groups, heads // groups, sq, skv)
    if kind == "causal":
        visible = torch.ones(sq, skv, dtype=torch.bool, device=query.device).tril()
    if kind != "full":
        scores = scores.masked_fill(~visible.view(-1, 1, 1, sq, skv), -math.inf)
    return scores


def attention_block(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kind: str,
                    visible: Optional[torch.Tensor], scale: float
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out [b, heads, sq, d] in the query's dtype, lse float32 [b, heads, sq]) of the block;
    `visible` is read for kind "masked" only. A row that sees no key gets out 0, lse -inf."""
    kernel = block_kernel(query.device, kind, query.dtype)
    if kernel != "reference":
        forward, _ = KERNELS[kernel]
        return forward(query, key, value, kind == "causal", scale)
    b, heads, sq, dim = query.shape
    scores = _reference_scores(query, key, kind, visible, scale)
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - _finite(lse).unsqueeze(-1)).to(query.dtype)
    groups = key.shape[1]
    out = torch.matmul(probs.view(b, groups, -1, key.shape[2]), value)
    return out.view(b, heads, sq, dim), lse.view(b, heads, sq)


def merge_into(acc_out: torch.Tensor, acc_lse: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor) -> None:
    """Fold a block's (out, lse) into the running float32 (acc_out, acc_lse), in place: the
    online softmax. Start from acc_out = 0 and acc_lse = -inf."""
    merged = torch.logaddexp(acc_lse, lse)
    finite = _finite(merged)
    acc_out.mul_(torch.exp(acc_lse - finite).unsqueeze(-1))
    acc_out.add_(out.float() * torch.exp(lse - finite).unsqueeze(-1))
    acc_lse.copy_(merged)


def attention_block_backward(grad_out: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             kind: str, visible: Optional[torch.Tensor], scale: float
                             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This block's share of (dQ, dK, dV), float32, given the whole attention's output `out`
    and log-sum-exp `lse` (its rows are the block's query rows; lse may be -inf for rows that see
    no key anywhere). With the global lse, P = exp(S * scale - lse) are the block's columns of the
    full softmax, so the shares summed over blocks are the full gradients:
    dV = P^T dO; dS = P * (dO V^T - rowsum(dO * O)); dQ = dS K * scale; dK = dS^T Q * scale."""
    kernel = block_kernel(query.device, kind, query.dtype)
    if kernel != "reference":
        _, backward = KERNELS[kernel]
        return backward(grad_out, query, key, value, out, lse, kind == "causal", scale)
    b, heads, sq, dim = query.shape
    groups, skv = key.shape[1], key.shape[2]
    scores = _reference_scores(query, key, kind, visible, scale)
    probs = torch.exp(scores - _finite(lse).view(b, groups, -1, sq, 1)).view(b, groups, -1, skv)
    d_out = _grouped(grad_out.float(), groups)
    row_dot = (grad_out.float() * out.float()).sum(-1).view(b, groups, -1, 1)
    grad_value = torch.matmul(probs.transpose(-1, -2), d_out)
    d_scores = probs * (torch.matmul(d_out, value.float().transpose(-1, -2)) - row_dot)
    grad_query = torch.matmul(d_scores, key.float()).mul_(scale).view(b, heads, sq, dim)
    grad_key = torch.matmul(d_scores.transpose(-1, -2), _grouped(query.float(), groups))
    return grad_query, grad_key.mul_(scale), grad_value

"""The tests' tiny Llama-style GPT (conftest.TINY_LLAMA: RMSNorm, GQA, RoPE, SwiGLU, untied
output layer, no biases) as a plain-PyTorch function of megatron-core's one-process weights,
written from the model's definition and sharing no code with megatron-core or modellink, so
that a gradient computed through it by autograd is an independent check of a training step.
"""
import math
from typing import Dict

import torch
import torch.nn.functional as F

Weights = Dict[str, torch.Tensor]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """x [b, s, heads, d]: rotate channel pairs (i, i + d/2) by position / base^(2i/d)."""
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)[None, :, None]
    first, second = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()


def _attention(x: torch.Tensor, w: Weights, prefix: str, heads: int, groups: int
               ) -> torch.Tensor:
    b, s, hidden = x.shape
    d, per_group = hidden // heads, heads // groups
    # megatron-core's fused QKV rows: per query group, its query heads, then one key, one value.
    qkv = (x @ w[prefix + "linear_qkv.weight"].T).view(b, s, groups, (per_group + 2) * d)
    q, k, v = qkv.split([per_group * d, d, d], dim=-1)
    q = _rope(q.reshape(b, s, heads, d))
    k = _rope(k).repeat_interleave(per_group, dim=2)
    v = v.repeat_interleave(per_group, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, hidden)
    return out @ w[prefix + "linear_proj.weight"].T


def logits(w: Weights, tokens: torch.Tensor, heads: int = 4, groups: int = 2) -> torch.Tensor:
    """[b, s, padded vocab] for tokens [b, s]; `w` by megatron-core's parameter names."""
    x = w["embedding.word_embeddings.weight"][tokens]
    layer = 0
    while f"decoder.layers.{layer}.input_layernorm.weight" in w:
        prefix = f"decoder.layers.{layer}."
        x = x + _attention(_rms_norm(x, w[prefix + "input_layernorm.weight"]), w,
                           prefix + "self_attention.", heads, groups)
        hidden = _rms_norm(x, w[prefix + "pre_mlp_layernorm.weight"])
        gate, up = (hidden @ w[prefix + "mlp.linear_fc1.weight"].T).chunk(2, dim=-1)
        x = x + (F.silu(gate) * up) @ w[prefix + "mlp.linear_fc2.weight"].T
        layer += 1
    return _rms_norm(x, w["decoder.final_layernorm.weight"]) @ w["output_layer.weight"].T


def sequence_logps(w: Weights, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's log-probability of its labels summed over its loss mask."""
    logp = logits(w, batch["tokens"]).log_softmax(dim=-1)
    mask = batch["loss_mask"].float()
    labels = torch.where(mask > 0, batch["labels"], 0)
    return (logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1) * mask).sum(dim=-1)

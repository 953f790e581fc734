"""ALiBi (`--position-embedding-type alibi`, Bloom): a per-head linear penalty on the distance
from query to key, added to the attention scores in place of position embeddings.

Slopes follow the ALiBi paper as Bloom computes them (float32, geometric per head, with the
interleaved extra heads when the head count is not a power of two). The bias is written as
slope * (j - i), which equals Bloom's slope * j up to a per-query constant that softmax
ignores, and stays small for long sequences.
"""
from __future__ import annotations

import math

import torch


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """float32 [num_heads], global head order."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(closest) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + closest, dtype=torch.int32))
    if closest != num_heads:
        extra = torch.tensor(2 ** (-(2 ** -(math.log2(2 * closest) - 3))), dtype=torch.float32)
        remaining = min(closest, num_heads - closest)
        slopes = torch.cat([slopes, torch.pow(extra, torch.arange(1, 1 + 2 * remaining, 2,
                                                                   dtype=torch.int32))])
    return slopes


def alibi_bias(slopes: torch.Tensor, sq: int, skv: int, device: torch.device) -> torch.Tensor:
    """float32 [heads, sq, skv]; queries are the last sq of skv positions (KV-cache steps)."""
    rows = torch.arange(sq, device=device)[:, None] + (skv - sq)
    cols = torch.arange(skv, device=device)[None, :]
    return slopes.to(device)[:, None, None] * (cols - rows).float()

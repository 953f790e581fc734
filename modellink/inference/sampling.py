"""Next-token choice from logits: temperature, top-k and top-p filtering, greedy or sampled.

The filters follow transformers' TemperatureLogitsWarper, TopKLogitsWarper and
TopPLogitsWarper (same order, same tie handling), so seeded runs can be compared with
`transformers.generate`. Megatron's convention for the flags: top_k 0 and top_p 0 mean off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class SamplingSettings:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0


def filter_scores(scores: torch.Tensor, settings: SamplingSettings, min_keep: int = 1
                  ) -> torch.Tensor:
    """Scores [n, vocab] with filtered-out entries set to -inf (no-op for greedy)."""
    if not settings.do_sample:
        return scores
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    if settings.top_k > 0:
        k = min(max(settings.top_k, min_keep), scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if 0.0 < settings.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - settings.top_p)
        remove[..., -min_keep:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    return scores


def choose_tokens(logits: torch.Tensor, settings: SamplingSettings,
                  generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token id per row of `logits` [n, vocab]."""
    if not settings.do_sample:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_scores(logits, settings), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)

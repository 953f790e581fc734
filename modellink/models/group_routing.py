"""group_limited_greedy as DeepSeek-V2 and ModelLink route: expert groups ranked by their best
expert's score.

megatron-core's group-limited top-k ranks a group by the sum of its best topk / group_topk
experts, which picks other groups than DeepSeek-V2 whenever that quotient exceeds 1 (V2 itself:
top-6 of 3 groups). Its unfused routing hands the top-k selection to the router's replay hook
where the router has one (`router_replay.get_replay_topk`, given the default selection to fall
back on): the one per-router place to change the selection. Our hook is a RouterReplay, so
recording and replaying routes keep working, with V2's ranking as the selection it records and
falls back on. Everything else (scores, scaling, aux losses, token dropping) stays
megatron-core's; test_deepseek2.py and test_residual_and_routing_flags.py fail if the hook is
no longer called.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.transformer.moe.router_replay import RouterReplay


def best_expert_group_topk(scores: torch.Tensor, topk: int, num_groups: Optional[int] = None,
                           group_topk: Optional[int] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scores, expert indices) of the top-k experts among the `group_topk` groups whose best
    expert scores highest; plain top-k without groups. `scores` are softmax scores or logits
    (megatron-core passes logits when it takes the softmax after the top-k): ranking groups by
    their maximum is the same for both."""
    if not group_topk:
        return torch.topk(scores, k=topk, dim=-1)
    tokens = scores.shape[0]
    best = scores.view(tokens, num_groups, -1).max(dim=-1).values
    chosen = torch.zeros_like(best, dtype=torch.bool).scatter(
        1, best.topk(group_topk, dim=-1).indices, True)
    allowed = chosen.repeat_interleave(scores.shape[1] // num_groups, dim=1)
    return scores.masked_fill(~allowed, float("-inf")).topk(topk, dim=-1)


class BestExpertGroups(RouterReplay):
    """The replay hook of one router: replays and records as megatron-core's does, and selects
    with `best_expert_group_topk` when not replaying."""

    def get_replay_topk(self, scores: torch.Tensor, topk: int, num_groups: Optional[int] = None,
                        group_topk: Optional[int] = None,
                        default_compute_topk: Optional[Callable[..., Any]] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
        return super().get_replay_topk(scores, topk, num_groups, group_topk,
                                       best_expert_group_topk)


class GroupLimitedRouter(TopKRouter):
    """megatron-core's TopKRouter with DeepSeek-V2's group ranking (the only one ModelLink's
    --moe-router-load-balancing-type group_limited_greedy has)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # megatron-core makes its own hook only with moe_enable_routing_replay, which no flag
        # of ours sets.
        self.router_replay = BestExpertGroups()

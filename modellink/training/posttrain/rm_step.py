"""The reward model's forward step (Megatron-LM's `forward_step_func`) and its pairwise
Bradley-Terry loss.

A micro-batch of b pairs is 2b rows (chosen, then rejected), scored in one forward. The model
ends in the value head (modellink/models/value_head.py), so the last stage returns a score per
position, [2b, s, 1]; a sequence's reward is the score at its last token, which the batch's
`score_mask` marks. Each pair's loss is -log sigmoid(r_chosen - r_rejected).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Callable, Dict, Iterator, Tuple

import torch
import torch.nn.functional as F

from modellink.training.posttrain.report import pair_loss_report

# Rows through the model per pair: chosen and rejected.
ROWS_PER_PAIR = 2


@dataclass
class PairRewards:
    losses: torch.Tensor  # [b], differentiable
    chosen: torch.Tensor  # [b], detached
    rejected: torch.Tensor


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor) -> PairRewards:
    return PairRewards(-F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach())


def sequence_rewards(scores: torch.Tensor, score_mask: torch.Tensor) -> torch.Tensor:
    """[rows, s, 1] scores, [rows, s] one-hot mask of each row's last token -> [rows]."""
    return (scores.float().squeeze(-1) * score_mask.float()).sum(dim=-1)


class RewardForwardStep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.check_nan = args.check_for_nan_in_loss_and_grad

    def __call__(self, data_iterator: Iterator, model_chunk: torch.nn.Module
                 ) -> Tuple[torch.Tensor, Callable]:
        batch = {key: value.cuda(non_blocking=True) for key, value in next(data_iterator).items()}
        output = model_chunk(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
        return output, partial(self.loss_func, batch["score_mask"])

    def loss_func(self, score_mask: torch.Tensor, output: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Sum of the micro-batch's pair losses and its pair count (the schedule averages);
        the report holds (sum, count) of each logged metric, reduced over data parallel."""
        rewards = sequence_rewards(output, score_mask)
        pairs = rewards.shape[0] // 2
        result = bradley_terry_losses(rewards[:pairs], rewards[pairs:])
        return pair_loss_report(result.losses.sum(), result.chosen, result.rejected,
                                self.check_nan)

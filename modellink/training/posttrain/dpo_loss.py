"""The DPO objective on sequence log-probabilities, as ModelLink computes it.

Each pair's policy and reference log-probabilities (sums over the response tokens) give the
implicit rewards beta * (policy - reference). The loss types are ModelLink's: `sigmoid` (with
conservative-DPO label smoothing), `hinge`, and `ipo`, which works on per-token averages of
the log-probabilities. `--pref-ftx` adds that weight times the chosen response's mean token
negative log-likelihood (an SFT term) to each pair's loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "hinge", "ipo")


@dataclass
class PairLogps:
    """Per-pair tensors [b]: log-probabilities summed over each response's label tokens and
    those token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass
class PairLosses:
    losses: torch.Tensor  # [b], differentiable
    chosen_rewards: torch.Tensor  # [b], detached
    rejected_rewards: torch.Tensor


def dpo_losses(logps: PairLogps, beta: float, loss_type: str, label_smoothing: float = 0.0,
               pref_ftx: float = 0.0) -> PairLosses:
    chosen_tokens = logps.chosen_tokens.clamp(min=1)
    rejected_tokens = logps.rejected_tokens.clamp(min=1)
    chosen_ratio = logps.chosen - logps.ref_chosen
    rejected_ratio = logps.rejected - logps.ref_rejected
    if loss_type == "ipo":
        # IPO's squared loss grows with response length on summed log-probs.
        margin = chosen_ratio / chosen_tokens - rejected_ratio / rejected_tokens
        losses = (margin - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "sigmoid":
        logits = beta * (chosen_ratio - rejected_ratio)
        losses = (-F.logsigmoid(logits) * (1 - label_smoothing)
                  - F.logsigmoid(-logits) * label_smoothing)
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; one of {', '.join(LOSS_TYPES)}")
    if pref_ftx:
        losses = losses + pref_ftx * (-logps.chosen / chosen_tokens)
    return PairLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())

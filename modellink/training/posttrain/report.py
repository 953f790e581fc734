"""What both preference stages (DPO and the reward model) return from their loss function:
the pair-loss sum, the pair count the schedule averages by, and (sum, count) of each logged
metric, which the loop reduces over data parallel."""
from __future__ import annotations

from typing import Dict, Tuple

import torch

from modellink.training.numerics import check_loss


def pair_loss_report(loss_sum: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                     check_nan: bool, **extra_sums: torch.Tensor
                     ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
    """`chosen`/`rejected`: [pairs] rewards; `extra_sums`: more logged sums, by metric name."""
    if check_nan:
        check_loss(loss_sum)
    count = torch.tensor(float(chosen.shape[0]), device=loss_sum.device)
    sums = {
        "lm loss": loss_sum.detach(),
        "rewards/chosen": chosen.sum(),
        "rewards/rejected": rejected.sum(),
        "rewards/accuracies": (chosen > rejected).float().sum(),
        "rewards/margins": (chosen - rejected).sum(),
        **extra_sums,
    }
    report = {key: torch.stack([value, count]) for key, value in sums.items()}
    return loss_sum, count.to(torch.int), report

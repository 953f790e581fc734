"""Reward-model micro-batches: the pairwise batches of pairwise_data.py, with each row's whole
sequence as model input and a one-hot `score_mask` on its last token.

Language-model rows drop their last token (it is only a target); a reward model scores the
whole sequence, the final EOS included, as Hugging Face's sequence classifiers read it at the
last non-padding token. Each row therefore gets one throw-away target appended, and the mask
marks where its real tokens end (right padding) or the last position (left padding).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy
import torch

from modellink.data.handlers import IGNORE_INDEX
from modellink.training.posttrain.pairwise_data import PAIR_KEYS, SIDES, PairwiseCollator


class RewardCollator:
    def __init__(self, seq_length: int, variable: bool, multiple: int,
                 eod_mask_id: Optional[int] = None, left: bool = False) -> None:
        self.pairs = PairwiseCollator(seq_length, variable, multiple, eod_mask_id, left)
        self.seq_length = seq_length
        self.left = left

    def __call__(self, pairs: Sequence[Dict[str, numpy.ndarray]]) -> Dict[str, torch.Tensor]:
        extended = [{key: numpy.append(pair[key], 0 if key.endswith("input_ids")
                                       else IGNORE_INDEX) for key in PAIR_KEYS}
                    for pair in pairs]
        batch = self.pairs(extended)
        rows, length = batch["tokens"].shape
        mask = torch.zeros(rows, length)
        ends = [length - 1 if self.left else min(len(pair[f"{side}_input_ids"]),
                                                 self.seq_length) - 1
                for side in SIDES for pair in pairs]
        mask[torch.arange(rows), torch.tensor(ends)] = 1
        batch["score_mask"] = mask
        return batch

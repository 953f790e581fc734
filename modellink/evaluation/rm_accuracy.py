"""Reward-model accuracy on pairs (`--task rm_accuracy --data-path PREFIX --load RM`).

PREFIX is a pairwise dataset as preprocess_data.py's pairwise handlers write it, the data
`trainer.py --stage rm` trains on. Each response row is scored as training scores it: the
value head's output at the row's last token (the token an exported sequence classifier
scores too, see modellink/checkpoint/reward.py). A pair is right when its chosen response
scores above its rejected one. Reported: that accuracy and the mean margin (chosen minus
rejected); the JSON also holds each pair's two rewards.
"""
from __future__ import annotations

import os
from typing import List, Sequence

import torch

from modellink.checkpoint.safe_load import load_pt
from modellink.evaluation.preference import Pair, Row, score_pairs
from modellink.evaluation.results import TaskResult
from modellink.inference.model import InferenceModel
from modellink.models.value_head import is_reward_model
from modellink.training.checkpoint.checkpointing import (
    MODEL_FILENAME, CheckpointError, iteration_dir, read_tracker)

TASK = "rm_accuracy"


def check_reward_checkpoint(root: str) -> None:
    """Before the model is built: --load must hold a reward model, whose value head scores."""
    iteration = read_tracker(root)
    folder = iteration_dir(root, iteration) if iteration is not None else ""
    ranks = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    path = os.path.join(folder, ranks[0], MODEL_FILENAME) if ranks else ""
    if not os.path.isfile(path):
        return  # load_model names what is missing
    saved = load_pt(path, CheckpointError, mmap=True)
    if not is_reward_model(saved.get("args")):
        raise CheckpointError(f"--task {TASK}: --load {root} holds a language model, not a "
                              f"reward model (trained with trainer.py --stage rm, or converted "
                              f"with convert_ckpt.py --orm)")


def rewards(model: InferenceModel, rows: Sequence[Row]) -> List[float]:
    """Each row's score at its last token, every rank getting the result."""
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), model.tokenizer.pad, dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        tokens[i, :len(ids)] = torch.as_tensor(ids)  # right padding: causal, so harmless
    scores = model.logits(tokens)
    last = None
    if scores is not None:
        ends = torch.tensor([len(ids) - 1 for ids, _ in rows], device=scores.device)
        last = scores[torch.arange(len(rows), device=scores.device), ends, 0]
    return model.share_from_last_stage(last, (len(rows),), torch.float32).tolist()


def rm_accuracy(model: InferenceModel, pairs: Sequence[Pair], batch_size: int) -> TaskResult:
    return score_pairs(TASK, lambda rows: rewards(model, rows), pairs, batch_size, "mean margin")

"""Preference accuracy on held-out pairs (`--task preference --data-path PREFIX`).

PREFIX is a pairwise dataset as preprocess_data.py's pairwise handlers write it for DPO, so
each pair is scored on exactly the tokens DPO trains on. A pair counts as right when the model
gives its chosen response a higher log-probability than its rejected one, each summed over the
response tokens (the positions whose label is not IGNORE_INDEX, as DPO's loss mask). Reported:
that accuracy, and the mean log-probability margin (chosen minus rejected).
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Sequence, Tuple

import numpy
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from modellink.data.handlers import IGNORE_INDEX
from modellink.evaluation.results import TaskResult
from modellink.inference.model import InferenceModel
from modellink.training.data.datasets import DataError
from modellink.training.data.instruction_data import packed_prefix
from modellink.training.posttrain.pairwise_data import PAIR_KEYS, SIDES, check_pairwise_prefix

Row = Tuple[numpy.ndarray, numpy.ndarray]  # (input_ids, labels)
Pair = Tuple[Row, Row]  # (chosen, rejected)


def response_logps(model: InferenceModel, rows: Sequence[Row]) -> List[float]:
    """Sum of log p(token) over each row's response tokens, every rank getting the result."""
    width = max(len(ids) for ids, _ in rows)
    tokens = torch.full((len(rows), width), model.tokenizer.pad, dtype=torch.long)
    scored = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (ids, labels) in enumerate(rows):
        tokens[i, :len(ids)] = torch.as_tensor(ids)  # right padding: causal, so harmless
        # Position t predicts token t + 1, which counts when it is a response token.
        scored[i, :len(ids) - 1] = torch.as_tensor(labels[1:] != IGNORE_INDEX)
    logits = model.logits(tokens)
    sums = None
    if logits is not None:
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        picked = log_probs.gather(2, tokens[:, 1:, None].to(logits.device))[..., 0]
        sums = (picked * scored.to(picked.device)).sum(dim=1)
    return model.share_from_last_stage(sums, (len(rows),), torch.float32).tolist()


def _pairs(prefix: str, max_length: int, limit: float) -> List[Pair]:
    count = check_pairwise_prefix(prefix)
    data = {key: IndexedDataset(packed_prefix(prefix, key), mmap=True) for key in PAIR_KEYS}
    pairs = []
    for index in range(min(count, limit)):
        # Copies: views into the files die with their memory maps when `data` goes.
        pair = tuple((numpy.array(data[f"{side}_input_ids"][index]),
                      numpy.array(data[f"{side}_labels"][index])) for side in SIDES)
        longest = max(len(ids) for ids, _ in pair)
        if longest > max_length:
            raise DataError(f"--data-path {prefix}: pair {index} has a row of {longest} tokens, "
                            f"more than --max-length {max_length}")
        pairs.append(pair)
    return pairs


def read_pairs(args: argparse.Namespace) -> List[Pair]:
    """Every pair of every --data-path prefix (at most --max-eval-samples of each), checked
    before the model loads."""
    try:
        prefixes, _ = get_blend_from_list(args.data_path)
    except Exception:
        raise DataError(f"--data-path must be PREFIX... or WEIGHT PREFIX pairs, "
                        f"got {' '.join(args.data_path)}") from None
    limit = args.max_eval_samples if args.max_eval_samples is not None else float("inf")
    pairs = [p for prefix in prefixes for p in _pairs(prefix, args.max_length, limit)]
    if not pairs:
        raise DataError(f"--data-path {' '.join(args.data_path)} holds no pairs to score")
    return pairs


def score_pairs(task: str, score: Callable[[List[Row]], List[float]], pairs: Sequence[Pair],
                batch_size: int, margin_name: str) -> TaskResult:
    """Accuracy (chosen scored above rejected) and the mean margin of `score` over the pairs,
    both sides of a batch in one call; each pair's two scores go to the JSON records."""
    result = TaskResult(task)
    margin = 0.0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        scores = score([chosen for chosen, _ in batch] + [rejected for _, rejected in batch])
        for chosen, rejected in zip(scores[:len(batch)], scores[len(batch):]):
            result.add("pairs", chosen > rejected)
            result.records.append({"chosen": chosen, "rejected": rejected})
            margin += chosen - rejected
    result.extra[margin_name] = margin / result.total
    return result


def preference_accuracy(model: InferenceModel, pairs: Sequence[Pair], batch_size: int
                        ) -> TaskResult:
    return score_pairs("preference", lambda rows: response_logps(model, rows), pairs,
                       batch_size, "mean logp margin")

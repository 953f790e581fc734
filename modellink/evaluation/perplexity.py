"""Perplexity on a Megatron indexed dataset (`--task ppl --data-path PREFIX`).

The documents are read in order, joined, and cut into consecutive windows of --seq-length
tokens (capped by --max-length); every token of a window after its first is predicted from
the ones before it. Reported: tokens scored, mean negative log-likelihood, and its exp.
"""
from __future__ import annotations

import argparse
import math
from typing import Iterator, List, Optional

import numpy
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from modellink.evaluation.lm import ModelLinkLM
from modellink.evaluation.results import TaskResult
from modellink.training.data.datasets import DataError, check_indexed_dataset


def windows(prefix: str, length: int, limit: Optional[int]) -> Iterator[List[int]]:
    check_indexed_dataset(prefix)
    dataset = IndexedDataset(prefix, mmap=True)
    buffer: List[int] = []
    produced = 0
    for index in range(len(dataset)):
        buffer.extend(numpy.asarray(dataset[index]).tolist())
        while len(buffer) >= length:
            yield buffer[:length]
            buffer = buffer[length:]
            produced += 1
            if limit is not None and produced >= limit:
                return
    if len(buffer) > 1:
        yield buffer


def perplexity(lm: ModelLinkLM, args: argparse.Namespace) -> TaskResult:
    try:
        prefixes, _ = get_blend_from_list(args.data_path)
    except Exception:
        raise DataError(f"--data-path must be PREFIX... or WEIGHT PREFIX pairs, "
                        f"got {' '.join(args.data_path)}") from None
    length = min(args.seq_length, args.max_length)
    total_nll, tokens = 0.0, 0
    for prefix in prefixes:
        batch: List[List[int]] = []
        for window in windows(prefix, length, args.max_eval_samples):
            batch.append(window)
            if len(batch) == args.evaluation_batch_size:
                total_nll -= sum(lm.score_tokens(batch, [1] * len(batch)))
                tokens += sum(len(w) - 1 for w in batch)
                batch = []
        if batch:
            total_nll -= sum(lm.score_tokens(batch, [1] * len(batch)))
            tokens += sum(len(w) - 1 for w in batch)
    if tokens == 0:
        raise DataError(f"--data-path {' '.join(args.data_path)} holds no tokens to score")
    mean = total_nll / tokens
    return TaskResult("ppl", extra={"tokens": tokens, "nll": mean, "ppl": math.exp(mean)})

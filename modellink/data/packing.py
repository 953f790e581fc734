"""--pack: several instruction samples per --seq-length sequence, none split across two.

Samples are assigned with LLaMA-Factory's greedy knapsack (largest sample that still fits,
capacity seq_length - 1 so at least one pad slot remains, as ModelLink does), then the packs are
written in an order shuffled by --seed. Every packed sequence has exactly seq_length tokens:

* input_ids: the samples back to back, then the tokenizer's pad id;
* labels: the samples' labels, IGNORE_INDEX on padding;
* attention_mask: segment ids, 1 on the first sample's tokens, 2 on the second's, ..., 0 on
  padding. A sample starts wherever the value changes, so attention can be confined to one
  sample and position ids restarted per sample; 0 marks tokens that attend to nothing.
"""

import bisect
from collections import defaultdict, deque
from typing import Callable, Dict, List

import numpy as np
from megatron.core.datasets.indexed_dataset import IndexedDataset

from modellink.data.handlers import IGNORE_INDEX
from modellink.data.worker import KeyData

PACKS_PER_WRITE = 256


def greedy_knapsack(lengths: np.ndarray, capacity: int) -> List[List[int]]:
    """Sample indices per pack; each pack takes the longest remaining sample that fits, again
    and again (ties: lowest index first). Every length must be in [1, capacity]."""
    queues: Dict[int, deque] = defaultdict(deque)
    for index in np.argsort(lengths, kind="stable"):
        queues[int(lengths[index])].append(int(index))
    available = sorted(queues)
    packs: List[List[int]] = []
    remaining = len(lengths)
    while remaining:
        pack, room = [], capacity
        while True:
            pos = bisect.bisect_right(available, room) - 1
            if pos < 0:
                break
            length = available[pos]
            pack.append(queues[length].popleft())
            room -= length
            remaining -= 1
            if not queues[length]:
                available.pop(pos)
        packs.append(pack)
    return packs


def pack_dataset(unpacked_prefixes: Dict[str, str], seq_length: int, pad_id: int, seed: int,
                 write: Callable[[Dict[str, KeyData], int], None]) -> int:
    """Reads unpacked input_ids/labels datasets and writes packed input_ids, labels and
    attention_mask through ``write`` (DatasetWriter.add); returns the number of packs."""
    # mmap=False: reads go through pread, so resident memory does not grow with the data.
    input_ids = IndexedDataset(unpacked_prefixes["input_ids"], mmap=False)
    labels = IndexedDataset(unpacked_prefixes["labels"], mmap=False)
    packs = greedy_knapsack(np.asarray(input_ids.sequence_lengths), seq_length - 1)
    order = np.random.default_rng(seed).permutation(len(packs))
    for start in range(0, len(order), PACKS_PER_WRITE):
        batch = [packs[i] for i in order[start:start + PACKS_PER_WRITE]]
        columns = {"input_ids": [], "labels": [], "attention_mask": []}
        for pack in batch:
            ids = [input_ids[i] for i in pack]
            pad = seq_length - sum(len(x) for x in ids)
            columns["input_ids"].append(np.concatenate(ids + [np.full(pad, pad_id)]))
            columns["labels"].append(np.concatenate([labels[i] for i in pack] + [np.full(pad, IGNORE_INDEX)]))
            columns["attention_mask"].append(np.concatenate(
                [np.full(len(x), segment) for segment, x in enumerate(ids, start=1)] + [np.zeros(pad)]))
        n = len(batch)
        write({key: KeyData(np.concatenate(rows).astype(np.int32), np.full(n, seq_length), np.ones(n, dtype=np.int64))
               for key, rows in columns.items()}, n)
    return len(packs)

"""Megatron-LM's pretraining batch sampler: each data-parallel rank takes its slice of every
global batch, in order, starting after the samples already consumed (so resume continues
exactly where the checkpoint stopped)."""
from __future__ import annotations

from typing import Iterator, List


class PretrainingSampler:
    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int) -> None:
        if consumed_samples > total_samples:
            raise ValueError(f"checkpoint consumed {consumed_samples} samples but the dataset "
                             f"holds only {total_samples}")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.rank = data_parallel_rank
        self.step = micro_batch_size * data_parallel_size

    def __len__(self) -> int:
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        start = self.rank * self.micro_batch_size
        for first in range(self.consumed_samples, self.total_samples - self.step + 1, self.step):
            yield list(range(first + start, first + start + self.micro_batch_size))

"""Instruction (fine-tuning) datasets: the three indexed datasets preprocess_data.py writes per
prefix (PREFIX_packed_{input_ids,attention_mask,labels}_document), one row per sample.

A row is one sample or, with --pack, several back to back (attention_mask holds their segment
ids). Rows go through megatron-core's BlendedMegatronDatasetBuilder like pretraining data, so
--split and weighted --data-path blends work the same way; a split is repeated for as many
epochs as the run needs, each in its own seeded order (file order with --no-shuffle). With
--full-shuffle-instruction-dataset, as ModelLink, those epochs are then shuffled together, so
a sample may come again before every other has been seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

import numpy
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

KEYS = ("input_ids", "attention_mask", "labels")


def packed_prefix(prefix: str, key: str) -> str:
    return f"{prefix}_packed_{key}_document"


def is_instruction_prefix(prefix: str) -> bool:
    return any(os.path.isfile(packed_prefix(prefix, key) + ".bin") for key in KEYS)


def check_instruction_prefix(prefix: str) -> int:
    """Fail early, naming the file, unless PREFIX holds three consistent instruction datasets;
    returns the number of rows."""
    from modellink.training.data.datasets import DataError, check_indexed_dataset

    for key in KEYS:
        suffix = f"_packed_{key}_document"
        if prefix.endswith(suffix):
            raise DataError(f"--data-path {prefix}: pass the prefix without {suffix!r}, "
                            f"as ModelLink: {prefix[:-len(suffix)]}")
    if not is_instruction_prefix(prefix) and os.path.isfile(prefix + ".bin"):
        raise DataError(f"--data-path {prefix} is a pretraining dataset ({prefix}.bin), not "
                        f"instruction data: drop --is-instruction-dataset, or preprocess with an "
                        f"instruction handler")
    lengths = {}
    for key in KEYS:
        check_indexed_dataset(packed_prefix(prefix, key))  # names a missing or broken file
        lengths[key] = _row_lengths(packed_prefix(prefix, key))
    for key in KEYS[1:]:
        if not numpy.array_equal(lengths[key], lengths["input_ids"]):
            raise DataError(f"instruction dataset {prefix}: {packed_prefix(prefix, key)} does not "
                            f"match {packed_prefix(prefix, 'input_ids')} row for row")
    return len(lengths["input_ids"])


def _row_lengths(path_prefix: str) -> numpy.ndarray:
    index = IndexedDataset(path_prefix)
    return numpy.array(index.sequence_lengths)  # a copy: the view dies with the index's mmap


def has_packed_rows(prefix: str) -> bool:
    """Whether a row holds two samples or more (segment ids above 1): one pass over the
    attention_mask file's bytes, without building the rows."""
    path = packed_prefix(prefix, "attention_mask")
    segments = numpy.memmap(path + ".bin", dtype=IndexedDataset(path).index.dtype, mode="r")
    return segments.size > 0 and int(segments.max()) > 1


def rows_longer_than(prefix: str, length: int) -> int:
    return int((_row_lengths(packed_prefix(prefix, "input_ids")) > length).sum())


@dataclass
class InstructionDatasetConfig(BlendedMegatronDatasetConfig):
    shuffle: bool = True
    full_shuffle: bool = False


class InstructionDataset(MegatronDataset):
    """Rows of one prefix's split, repeated over epochs; a sample is a dict of int arrays."""

    def __init__(self, dataset: Dict[str, IndexedDataset], dataset_path: Optional[str],
                 indices: numpy.ndarray, num_samples: Optional[int], index_split: Split,
                 config: InstructionDatasetConfig) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        epoch = len(indices)
        wanted = epoch if num_samples is None else num_samples
        orders = []
        for number in range(-(-wanted // epoch)):
            if config.shuffle:
                # Seeded by (seed, split, epoch): every rank draws the same order.
                rng = numpy.random.default_rng((config.random_seed, index_split.value, number))
                orders.append(rng.permutation(epoch))
            else:
                orders.append(numpy.arange(epoch))
        order = numpy.concatenate(orders)
        if config.full_shuffle:
            rng = numpy.random.default_rng((config.random_seed, index_split.value, len(orders)))
            order = rng.permutation(order)
        self.rows = indices[order[:wanted]]

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: Dict[str, IndexedDataset]) -> int:
        return len(low_level_dataset["input_ids"])

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: InstructionDatasetConfig
                                ) -> Dict[str, IndexedDataset]:
        return {key: IndexedDataset(packed_prefix(dataset_path, key), mmap=config.mmap_bin_files)
                for key in KEYS}

    @staticmethod
    def _key_config_attributes() -> list:
        return MegatronDataset._key_config_attributes() + ["shuffle", "full_shuffle"]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int) -> Dict[str, numpy.ndarray]:
        row = int(self.rows[idx])
        return {key: numpy.array(self.dataset[key][row], dtype=numpy.int64) for key in KEYS}

"""Pairwise (preference) datasets and their micro-batches.

preprocess_data.py's pairwise handlers write four indexed datasets per prefix,
PREFIX_packed_{chosen,rejected}_{input_ids,labels}_document, one row per pair. A pair's chosen
and rejected responses go through the model in one forward: a micro-batch of b pairs is 2b
rows, the b chosen ones first, all padded to one length (the longest of the 2b with
--variable-seq-lengths), with the instruction batches' conventions (next-token targets, loss
mask on response tokens only).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from modellink.training.data.instruction_batch import InstructionCollator
from modellink.training.data.instruction_data import (
    InstructionDataset,
    InstructionDatasetConfig,
    packed_prefix,
)

SIDES = ("chosen", "rejected")
PAIR_KEYS = tuple(f"{side}_{key}" for side in SIDES for key in ("input_ids", "labels"))


def is_pairwise_prefix(prefix: str) -> bool:
    return any(os.path.isfile(packed_prefix(prefix, key) + ".bin") for key in PAIR_KEYS)


def check_pairwise_prefix(prefix: str) -> int:
    """Fail early, naming the file, unless PREFIX holds four consistent pairwise datasets;
    returns the number of pairs."""
    from modellink.training.data.datasets import DataError, check_indexed_dataset
    from modellink.training.data.instruction_data import is_instruction_prefix

    if not is_pairwise_prefix(prefix):
        if is_instruction_prefix(prefix):
            raise DataError(f"--data-path {prefix} is instruction data "
                            f"({prefix}_packed_input_ids_document), not pairs: --stage dpo|rm "
                            f"need a pairwise handler's output (AlpacaStylePairwiseHandler)")
        if os.path.isfile(prefix + ".bin"):
            raise DataError(f"--data-path {prefix} is a pretraining dataset ({prefix}.bin), not "
                            f"pairs: --stage dpo|rm need a pairwise handler's output "
                            f"(AlpacaStylePairwiseHandler)")
    lengths = {}
    for key in PAIR_KEYS:
        check_indexed_dataset(packed_prefix(prefix, key))  # names a missing or broken file
        lengths[key] = _row_lengths(packed_prefix(prefix, key))
    for side in SIDES:
        if not numpy.array_equal(lengths[f"{side}_labels"], lengths[f"{side}_input_ids"]):
            raise DataError(f"pairwise dataset {prefix}: "
                            f"{packed_prefix(prefix, side + '_labels')} does not match "
                            f"{packed_prefix(prefix, side + '_input_ids')} row for row")
    if len(lengths["chosen_input_ids"]) != len(lengths["rejected_input_ids"]):
        raise DataError(f"pairwise dataset {prefix}: {len(lengths['chosen_input_ids'])} chosen "
                        f"rows but {len(lengths['rejected_input_ids'])} rejected rows")
    return len(lengths["chosen_input_ids"])


def _row_lengths(path_prefix: str) -> numpy.ndarray:
    index = IndexedDataset(path_prefix)
    return numpy.array(index.sequence_lengths)  # a copy: the view dies with the index's mmap


def pair_rows_longer_than(prefix: str, length: int) -> int:
    return int(sum((_row_lengths(packed_prefix(prefix, f"{side}_input_ids")) > length).sum()
                   for side in SIDES))


class PairwiseDataset(InstructionDataset):
    """Pairs of one prefix's split, repeated and shuffled over epochs as instruction rows."""

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: Dict[str, IndexedDataset]) -> int:
        return len(low_level_dataset["chosen_input_ids"])

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: InstructionDatasetConfig
                                ) -> Dict[str, IndexedDataset]:
        return {key: IndexedDataset(packed_prefix(dataset_path, key), mmap=config.mmap_bin_files)
                for key in PAIR_KEYS}

    def __getitem__(self, idx: int) -> Dict[str, numpy.ndarray]:
        row = int(self.rows[idx])
        return {key: numpy.array(self.dataset[key][row], dtype=numpy.int64) for key in PAIR_KEYS}


class PairwiseCollator:
    """b pairs -> one instruction micro-batch of 2b rows: chosen rows, then rejected rows."""

    def __init__(self, seq_length: int, variable: bool, multiple: int,
                 eod_mask_id: Optional[int] = None, left: bool = False) -> None:
        self.rows = InstructionCollator(seq_length, variable, multiple, eod_mask_id, left)

    def __call__(self, pairs: Sequence[Dict[str, numpy.ndarray]]) -> Dict[str, torch.Tensor]:
        samples = []
        for side in SIDES:
            for pair in pairs:
                ids = pair[f"{side}_input_ids"]
                # One sample per row: a single segment, so no cross-sample attention mask.
                samples.append({"input_ids": ids, "labels": pair[f"{side}_labels"],
                                "attention_mask": numpy.ones_like(ids)})
        return self.rows(samples)

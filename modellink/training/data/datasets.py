"""Training data: Megatron indexed datasets (or mock data) through megatron-core's GPTDataset
and BlendedMegatronDatasetBuilder, served per data-parallel rank by the pretraining sampler."""
from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy
import torch
from megatron.core import parallel_state
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import get_blend_from_list

from modellink.training.data.instruction_batch import InstructionCollator, length_multiple
from modellink.training.data.instruction_data import (
    InstructionDataset,
    InstructionDatasetConfig,
    check_instruction_prefix,
    is_instruction_prefix,
    rows_longer_than,
)
from modellink.training.data.sampler import PretrainingSampler
from modellink.user_error import UserError


class DataError(UserError, ValueError):
    """Missing, truncated or inconsistent dataset files; the message names the file."""


class _TokenizerForDataset:
    """The attributes megatron-core's GPTDataset reads from a tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.vocab_size = tokenizer.vocab_size
        self.eod = tokenizer.eod
        self.pad = getattr(tokenizer, "pad", tokenizer.eod)
        self.unique_identifiers = {"class": type(tokenizer).__name__,
                                   "vocab_size": tokenizer.vocab_size}


def check_indexed_dataset(prefix: str) -> int:
    """Fail early, naming the file, on a missing, unreadable or truncated .bin/.idx pair;
    returns the number of documents."""
    for suffix in (".bin", ".idx"):
        if not os.path.isfile(prefix + suffix):
            raise DataError(f"dataset file not found: {prefix + suffix}")
    try:
        index = IndexedDataset(prefix, mmap=True)
    except Exception as exc:  # numpy/struct errors from a damaged index
        raise DataError(f"corrupt dataset index {prefix}.idx: {exc}") from None
    sizes, pointers = index.index.sequence_lengths, index.index.sequence_pointers
    if len(sizes) == 0:
        raise DataError(f"dataset {prefix} holds no sequences")
    dtype = numpy.dtype(index.index.dtype)
    expected = int(pointers[-1]) + int(sizes[-1]) * dtype.itemsize
    actual = os.path.getsize(prefix + ".bin")
    if actual < expected:
        raise DataError(f"truncated dataset {prefix}.bin: {actual} bytes, index expects {expected}")
    if actual > expected:
        # A .bin rewritten (or written with another dtype) under an old .idx: most of it would
        # never be sampled, silently.
        raise DataError(f"dataset {prefix}.bin holds {actual} bytes but {prefix}.idx describes "
                        f"{expected} ({dtype.name} tokens); the two files are from different "
                        "preprocessing runs")
    return len(index.index.document_indices) - 1


@dataclass
class _IndexKeyedConfig(GPTDatasetConfig):
    """GPTDatasetConfig plus a digest of every .idx in the blend. The cached sample indices are
    a function of the .idx (sequence lengths, document boundaries) and the config, yet
    megatron-core keys them by path and config only: a corpus rewritten under the same prefix
    would reuse the old indices and never sample its new documents."""

    index_digests: Optional[Dict[str, str]] = None


class IndexKeyedGPTDataset(GPTDataset):
    """GPTDataset whose index cache is rebuilt when its dataset's .idx changes."""

    @staticmethod
    def _key_config_attributes() -> List[str]:
        return GPTDataset._key_config_attributes() + ["index_digests"]


def _index_digest(prefix: str) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with open(prefix + ".idx", "rb") as index:
        for block in iter(lambda: index.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_splits(prefix: str, documents: int, split: str, sizes: List[int]) -> None:
    # megatron-core loops forever looking for epochs when a split it must sample is empty.
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for name, bounds, size in zip(("train", "validation", "test"), matrix, sizes):
        if size == 0 or bounds is None:
            continue
        begin, end = (int(round(b * documents)) for b in bounds)
        if end <= begin:
            raise DataError(f"--split {split!r} leaves the {name} split of {prefix} empty "
                            f"({documents} documents) but {size} {name} samples are needed")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _blend(args: argparse.Namespace, sizes: List[int]
           ) -> Optional[Tuple[List[str], Optional[List[float]]]]:
    if args.mock_data:
        return None
    if len(args.data_path) % 2 and any(_is_number(entry) for entry in args.data_path):
        # megatron-core would take every entry, weights included, for a prefix.
        raise DataError(f"--data-path must be PREFIX... or WEIGHT PREFIX pairs, got "
                        f"{len(args.data_path)} entries: {' '.join(args.data_path)}")
    try:
        prefixes, weights = get_blend_from_list(args.data_path)
    except Exception:
        raise DataError(f"--data-path must be PREFIX... or WEIGHT PREFIX pairs, "
                        f"got {' '.join(args.data_path)}") from None
    for prefix in prefixes:
        if args.is_instruction_dataset:
            documents = check_instruction_prefix(prefix)
        elif not os.path.isfile(prefix + ".bin") and is_instruction_prefix(prefix):
            raise DataError(f"--data-path {prefix} is an instruction dataset "
                            f"({prefix}_packed_*_document): add --is-instruction-dataset")
        else:
            documents = check_indexed_dataset(prefix)
        _check_splits(prefix, documents, args.split, sizes)
    return prefixes, weights


def _instruction_config(args: argparse.Namespace, tokenizer: Any,
                        blend: Tuple[List[str], Optional[List[float]]]
                        ) -> InstructionDatasetConfig:
    truncated = sum(rows_longer_than(prefix, args.seq_length + 1) for prefix in blend[0])
    if truncated and torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        print(f"modellink: {truncated} instruction rows hold more than --seq-length + 1 = "
              f"{args.seq_length + 1} tokens and are truncated", flush=True)
    return InstructionDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend, split=args.split,
        path_to_cache=args.data_cache_path, mmap_bin_files=args.mmap_bin_files,
        tokenizer=_TokenizerForDataset(tokenizer), shuffle=not args.no_shuffle,
        full_shuffle=args.full_shuffle_instruction_dataset)


def _split_sizes(args: argparse.Namespace) -> List[int]:
    """Samples each split must supply for the whole run, as Megatron-LM sizes them (no test
    split: nothing here evaluates on it)."""
    gbs = args.global_batch_size
    evals = args.train_iters // args.eval_interval + 1 if args.eval_iters > 0 else 0
    return [args.train_iters * gbs, evals * args.eval_iters * gbs, 0]


def check_data_files(args: argparse.Namespace) -> None:
    """The dataset checks of `build_datasets`, run at start-up so a bad file is reported
    before the model is built or a checkpoint loaded."""
    _blend(args, _split_sizes(args))


def build_datasets(args: argparse.Namespace, tokenizer: Any) -> Tuple[Any, Any]:
    """Train and validation datasets sized for the whole run."""
    sizes = _split_sizes(args)
    blend = _blend(args, sizes)
    if args.is_instruction_dataset:
        config, dataset_cls = _instruction_config(args, tokenizer, blend), InstructionDataset
    else:
        config = _pretraining_config(args, tokenizer, blend)
        dataset_cls = MockGPTDataset if args.mock_data else IndexKeyedGPTDataset
    # Splits nobody samples are not built: megatron-core would loop forever on an empty one.
    config.split_matrix = [None if size == 0 else bounds
                           for size, bounds in zip(sizes, config.split_matrix)]
    train, valid, _ = BlendedMegatronDatasetBuilder(
        dataset_cls, sizes, lambda: True, config
    ).build()
    if train is None or len(train) < sizes[0]:
        raise DataError(f"the train split holds {0 if train is None else len(train)} samples, "
                        f"{sizes[0]} needed; check --split {args.split!r}")
    return train, valid


def _pretraining_config(args: argparse.Namespace, tokenizer: Any,
                        blend: Optional[Tuple[List[str], Optional[List[float]]]]
                        ) -> GPTDatasetConfig:
    return _IndexKeyedConfig(
        index_digests=None if blend is None else {p: _index_digest(p) for p in blend[0]},
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        split=args.split,
        path_to_cache=args.data_cache_path,
        mmap_bin_files=args.mmap_bin_files,
        tokenizer=_TokenizerForDataset(tokenizer),
        reset_position_ids=args.reset_position_ids,
        reset_attention_mask=args.reset_attention_mask,
        eod_mask_loss=args.eod_mask_loss,
        create_attention_mask=args.reset_attention_mask,
    )


def build_iterator(dataset: Any, args: argparse.Namespace, consumed_samples: int
                   ) -> Optional[Iterator]:
    if dataset is None or len(dataset) == 0:
        return None
    sampler = PretrainingSampler(
        total_samples=len(dataset),
        consumed_samples=consumed_samples,
        micro_batch_size=args.micro_batch_size,
        data_parallel_rank=parallel_state.get_data_parallel_rank(),
        data_parallel_size=parallel_state.get_data_parallel_world_size(),
    )
    collate = None
    if args.is_instruction_dataset:
        collate = InstructionCollator(
            args.seq_length, args.variable_seq_lengths,
            length_multiple(args.tensor_model_parallel_size, args.sequence_parallel,
                            args.pad_to_multiple_of),
            dataset.config.tokenizer.eod if args.eod_mask_loss else None,
            left=args.tokenizer_padding_side == "left")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0, collate_fn=collate,
    )
    return iter(loader)

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

from modellink.patches.node_local_caches import first_local_ranks_build
from modellink.training.data.instruction_batch import InstructionCollator, length_multiple
from modellink.training.data.instruction_data import (
    InstructionDataset,
    InstructionDatasetConfig,
    check_instruction_prefix,
    has_packed_rows,
    is_instruction_prefix,
    rows_longer_than,
)
from modellink.training.data.sampler import PretrainingSampler
from modellink.models.value_head import is_reward_model
from modellink.training.posttrain.pairwise_data import (
    PairwiseCollator,
    PairwiseDataset,
    check_pairwise_prefix,
    is_pairwise_prefix,
    pair_rows_longer_than,
)
from modellink.training.posttrain.rm_data import RewardCollator
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


Blend = Tuple[List[str], Optional[List[float]]]
# Megatron-LM's per-split flags, in megatron-core's split order (train, validation, test).
_SPLIT_DATA_FLAGS = ("--train-data-path", "--valid-data-path", "--test-data-path")


def _parse_blend(flag: str, entries: List[str]) -> Blend:
    if len(entries) % 2 and any(_is_number(entry) for entry in entries):
        # megatron-core would take every entry, weights included, for a prefix.
        raise DataError(f"{flag} must be PREFIX... or WEIGHT PREFIX pairs, got "
                        f"{len(entries)} entries: {' '.join(entries)}")
    try:
        blend = get_blend_from_list(entries)
    except Exception:
        raise DataError(f"{flag} must be PREFIX... or WEIGHT PREFIX pairs, "
                        f"got {' '.join(entries)}") from None
    weights = blend[1] or []
    if any(weight <= 0 for weight in weights):
        # megatron-core's blended dataset would stop on a bare assertion.
        raise DataError(f"{flag} weights must be positive, got {' '.join(map(str, weights))}")
    return blend


def _check_prefix(flag: str, prefix: str, args: argparse.Namespace) -> int:
    """The number of documents (rows) of a checked dataset."""
    if args.is_pairwise_dataset:
        return check_pairwise_prefix(prefix)
    if is_pairwise_prefix(prefix):
        raise DataError(f"{flag} {prefix} is a pairwise dataset "
                        f"({prefix}_packed_chosen_*_document): train on it with "
                        f"--stage dpo|rm --is-pairwise-dataset")
    if args.is_instruction_dataset:
        return check_instruction_prefix(prefix)
    if not os.path.isfile(prefix + ".bin") and is_instruction_prefix(prefix):
        raise DataError(f"{flag} {prefix} is an instruction dataset "
                        f"({prefix}_packed_*_document): add --is-instruction-dataset")
    return check_indexed_dataset(prefix)


def _blends(args: argparse.Namespace, sizes: List[int]
            ) -> Tuple[Optional[Blend], Optional[List[Optional[Blend]]]]:
    """megatron-core's `blend` (--data-path, divided by --split) or `blend_per_split` (one
    blend per split flag; None for a split not given or not sampled), every file checked."""
    if args.mock_data:
        return None, None
    if args.data_path is not None:
        blend = _parse_blend("--data-path", args.data_path)
        for prefix in blend[0]:
            _check_splits(prefix, _check_prefix("--data-path", prefix, args), args.split, sizes)
        return blend, None
    per_split: List[Optional[Blend]] = []
    paths = (args.train_data_path, args.valid_data_path, args.test_data_path)
    for flag, entries, size in zip(_SPLIT_DATA_FLAGS, paths, sizes):
        blend = None if entries is None else _parse_blend(flag, entries)
        for prefix in [] if blend is None else blend[0]:
            _check_prefix(flag, prefix, args)  # an empty dataset is refused here
        per_split.append(blend if size else None)
    return None, per_split


def _prefixes(blend: Optional[Blend], per_split: Optional[List[Optional[Blend]]]) -> List[str]:
    blends = [blend] if per_split is None else per_split
    return [prefix for each in blends if each is not None for prefix in each[0]]


def _instruction_config(args: argparse.Namespace, tokenizer: Any, blend: Optional[Blend],
                        per_split: Optional[List[Optional[Blend]]]) -> InstructionDatasetConfig:
    longer_than = pair_rows_longer_than if args.is_pairwise_dataset else rows_longer_than
    truncated = sum(longer_than(prefix, args.seq_length + 1)
                    for prefix in _prefixes(blend, per_split))
    if truncated and torch.distributed.is_initialized() and torch.distributed.get_rank() == 0:
        print(f"modellink: {truncated} instruction rows hold more than --seq-length + 1 = "
              f"{args.seq_length + 1} tokens and are truncated", flush=True)
    return InstructionDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=blend,
        blend_per_split=per_split, split=args.split,
        path_to_cache=args.data_cache_path, mmap_bin_files=args.mmap_bin_files,
        tokenizer=_TokenizerForDataset(tokenizer), shuffle=not args.no_shuffle,
        full_shuffle=args.full_shuffle_instruction_dataset)


def _split_sizes(args: argparse.Namespace) -> List[int]:
    """Samples each split must supply for the whole run, as Megatron-LM sizes them. The test
    split is evaluated once after training, and only from --test-data-path: --split's test
    share is never sampled here."""
    gbs = args.global_batch_size
    evals = args.train_iters // args.eval_interval + 1 if args.eval_iters > 0 else 0
    tests = 1 if args.test_data_path is not None and args.eval_iters > 0 else 0
    return [args.train_iters * gbs, evals * args.eval_iters * gbs, tests * args.eval_iters * gbs]


def check_data_files(args: argparse.Namespace) -> None:
    """The dataset checks of `build_datasets`, run at start-up so a bad file is reported
    before the model is built or a checkpoint loaded."""
    blend, per_split = _blends(args, _split_sizes(args))
    if (args.context_parallel_size > 1
            and args.cp_attention_mask_type == "causal" and args.is_instruction_dataset):
        for prefix in _prefixes(blend, per_split):
            if has_packed_rows(prefix):
                raise DataError(f"--data-path {prefix} holds packed samples, whose attention "
                                f"mask --cp-attention-mask-type causal would not apply: add "
                                f"--cp-attention-mask-type general")


def build_datasets(args: argparse.Namespace, tokenizer: Any) -> Tuple[Any, Any]:
    """Train and validation datasets sized for the whole run."""
    return build_split_datasets(args, tokenizer)[:2]


def build_split_datasets(args: argparse.Namespace, tokenizer: Any) -> Tuple[Any, Any, Any]:
    """Train, validation and test datasets sized for the whole run (None for a split nobody
    samples)."""
    sizes = _split_sizes(args)
    blend, per_split = _blends(args, sizes)
    if args.is_instruction_dataset:
        config = _instruction_config(args, tokenizer, blend, per_split)
        dataset_cls = PairwiseDataset if args.is_pairwise_dataset else InstructionDataset
    else:
        config = _pretraining_config(args, tokenizer, blend, per_split)
        dataset_cls = MockGPTDataset if args.mock_data else IndexKeyedGPTDataset
    if per_split is None:
        # Splits nobody samples are not built: megatron-core would loop forever on an empty one.
        config.split_matrix = [None if size == 0 else bounds
                               for size, bounds in zip(sizes, config.split_matrix)]
    builder = BlendedMegatronDatasetBuilder(dataset_cls, sizes, lambda: True, config)
    try:
        with first_local_ranks_build(args.no_shared_storage):
            train, valid, test = builder.build()
    except FileNotFoundError as exc:
        if not str(exc.filename).endswith(".npy"):
            raise
        # Rank 0 wrote the index caches, then this rank found none: not the same file system.
        raise DataError(f"dataset index cache {exc.filename} is missing on this rank's node, "
                        f"though rank 0 built it: nodes that do not share --data-cache-path "
                        f"need --no-shared-storage") from None
    if train is None or len(train) < sizes[0]:
        raise DataError(f"the train split holds {0 if train is None else len(train)} samples, "
                        f"{sizes[0]} needed; check --split {args.split!r}")
    return train, valid, test


def _pretraining_config(args: argparse.Namespace, tokenizer: Any, blend: Optional[Blend],
                        per_split: Optional[List[Optional[Blend]]]) -> GPTDatasetConfig:
    return _IndexKeyedConfig(
        index_digests={p: _index_digest(p) for p in _prefixes(blend, per_split)} or None,
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=blend,
        blend_per_split=per_split,
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
        collate = (RewardCollator if is_reward_model(args) else PairwiseCollator
                   if args.is_pairwise_dataset else InstructionCollator)(
            args.seq_length, args.variable_seq_lengths,
            length_multiple(args.tensor_model_parallel_size, args.sequence_parallel,
                            args.pad_to_multiple_of, args.context_parallel_size),
            dataset.config.tokenizer.eod if args.eod_mask_loss else None,
            left=args.tokenizer_padding_side == "left")
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0, collate_fn=collate,
    )
    return iter(loader)

"""Reading input through Hugging Face ``datasets``, as ModelLink does: ``load_dataset`` with its
cache (--cache-dir, --overwrite-cache), streaming (--streaming), its own arguments
(--hf-datasets-params), and several inputs mixed (--dataset-dir, --mix-strategy,
--interleave-probs).

Plain local files without these flags go through readers.py instead: its byte-range chunks are
parsed by the workers, so the main process never touches every record, which is measurably
faster (bench/preprocess_throughput.py --hf-datasets prints both side by side).
"""

import argparse
import json
import os
from typing import Any, Iterator, List

from modellink.argument_errors import ArgumentError
from modellink.data.readers import RECORD_CHUNK_SIZE, RecordChunk, discover_inputs, input_format

BUILDERS = {"jsonl": "json", "json": "json", "txt": "text", "csv": "csv", "parquet": "parquet",
            "arrow": "arrow"}
STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted"}
DEFAULT_MIX_SEED = 1234


def wanted(args: argparse.Namespace) -> bool:
    """Whether a flag asks for Hugging Face ``datasets``."""
    return bool(args.hf_datasets_params or args.streaming or args.cache_dir or args.overwrite_cache
                or args.dataset_dir or len(input_paths(args)) > 1)


def input_paths(args: argparse.Namespace) -> List[str]:
    """--input's comma-separated entries, under --dataset-dir when given."""
    if args.input is None:
        return []
    names = [name.strip() for name in args.input.split(",") if name.strip()]
    return [os.path.join(args.dataset_dir, n) if args.dataset_dir else n for n in names]


def input_files(args: argparse.Namespace) -> List[str]:
    """The local data files read (for the progress total); none for --hf-datasets-params."""
    if args.hf_datasets_params:
        return []
    return [f for path in input_paths(args) for f in discover_inputs(path)]


def load(args: argparse.Namespace) -> Any:
    """The input as one ``datasets.Dataset`` (or ``IterableDataset`` with --streaming)."""
    import datasets

    if args.hf_datasets_params:
        return _from_params(args.hf_datasets_params, datasets)
    parts = [_load_local(path, args, datasets) for path in input_paths(args)]
    if args.mix_strategy == "concat":
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    probs = None if args.interleave_probs is None else [float(p) for p in args.interleave_probs.split(",")]
    return datasets.interleave_datasets(
        parts, probabilities=probs, seed=DEFAULT_MIX_SEED if args.seed is None else args.seed,
        stopping_strategy=STOPPING[args.mix_strategy])


def record_chunks(dataset: Any, label: str, total_bytes: int) -> Iterator[RecordChunk]:
    """Batches of records; input bytes are shared out by row where the row count is known."""
    rows = len(dataset) if hasattr(dataset, "__len__") else None
    records: List[dict] = []
    done = reported = 0
    for record in dataset:
        records.append(record)
        done += 1
        if len(records) == RECORD_CHUNK_SIZE:
            position = total_bytes * done // rows if rows else 0
            yield RecordChunk(label, records, list(range(done - len(records) + 1, done + 1)), "row",
                              position - reported)
            records, reported = [], position
    if records:
        yield RecordChunk(label, records, list(range(done - len(records) + 1, done + 1)), "row",
                          total_bytes - reported)


def _load_local(path: str, args: argparse.Namespace, datasets: Any) -> Any:
    files = discover_inputs(path)
    builders = {BUILDERS[input_format(f)] for f in files}
    if len(builders) > 1:
        raise ArgumentError(f"--input {path}: mixes file types ({', '.join(sorted(builders))}); "
                            "give each type as its own comma-separated --input entry")
    return datasets.load_dataset(
        builders.pop(), data_files=files, split="train", cache_dir=args.cache_dir,
        streaming=args.streaming,
        download_mode="force_redownload" if args.overwrite_cache else "reuse_dataset_if_exists")


def _from_params(path: str, datasets: Any) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            params = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ArgumentError(f"--hf-datasets-params {path}: cannot read a JSON object ({err})") from None
    if not isinstance(params, dict) or "path" not in params:
        raise ArgumentError(f"--hf-datasets-params {path}: must be a JSON object of load_dataset "
                            "arguments with at least \"path\"")
    dataset = datasets.load_dataset(**params)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ArgumentError(f"--hf-datasets-params {path}: names no \"split\"; the splits are "
                            f"{', '.join(dataset)}")
    return dataset

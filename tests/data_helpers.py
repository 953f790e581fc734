"""Shared helpers for the data pipeline tests: local tokenizers and running preprocessing."""

import json
import os
from typing import Dict, Iterable, List, Sequence

import numpy as np
import pytest

from modellink.data.demo import generate_demo
from modellink.data.preprocess import run
from modellink.data.preprocess_args import build_parser


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Dict[str, str]:
    """The built-in demo files (corpus, instruction set, test split, tokenizer)."""
    return generate_demo(str(tmp_path_factory.mktemp("demo")), num_train=400, seed=7)


def write_jsonl(path, rows: Iterable[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def preprocess(input_path, output_prefix, tokenizer_dir, *extra: str) -> List[str]:
    """Runs preprocess_data.py's logic in-process; returns the output prefixes."""
    argv = ["--input", str(input_path), "--output-prefix", str(output_prefix),
            "--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", str(tokenizer_dir), *extra]
    return run(build_parser().parse_args(argv))


def read_dataset(prefix: str) -> List[np.ndarray]:
    """Every sequence of an indexed dataset, read with megatron-core."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    return [np.array(dataset[i]) for i in range(len(dataset))]  # copies: views die with the mmap


def read_documents(prefix: str) -> List[List[np.ndarray]]:
    """Sequences grouped by document."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    bounds = dataset.document_indices
    return [[np.array(dataset[i]) for i in range(bounds[d], bounds[d + 1])] for d in range(len(bounds) - 1)]


def file_bytes(prefixes: Sequence[str]) -> Dict[str, bytes]:
    out = {}
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            with open(prefix + ext, "rb") as f:
                out[os.path.basename(prefix) + ext] = f.read()
    return out

"""Writing Megatron indexed datasets (.bin/.idx) with megatron-core's IndexedDatasetBuilder,
under temporary names that are renamed only once every file is complete."""

import array
import os
from typing import Dict, Iterable, List

import numpy as np
from megatron.core.datasets.indexed_dataset import (
    IndexedDatasetBuilder,
    _IndexWriter,
    get_bin_path,
    get_idx_path,
)

from modellink.argument_errors import ArgumentError
from modellink.data.worker import KeyData


def check_outputs_free(prefixes: Iterable[str], overwrite: bool) -> None:
    """Refuses to replace existing outputs unless ``overwrite``."""
    existing = [p for prefix in prefixes for p in (get_bin_path(prefix), get_idx_path(prefix)) if os.path.exists(p)]
    if existing and not overwrite:
        raise ArgumentError(f"output files exist: {', '.join(existing)} (pass --overwrite to replace them)")


class _IndexWriterNumpy(_IndexWriter):
    """megatron-core's .idx writer, byte for byte, with its per-sequence Python loop over the
    offsets done by numpy (that loop alone held a Python int per sequence)."""

    def _sequence_pointers(self, sequence_lengths) -> np.ndarray:
        lengths = np.asarray(sequence_lengths, dtype=np.int64)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1] * np.dtype(self.dtype).itemsize, out=pointers[1:])
        return pointers


def new_builder(bin_path: str, dtype: type) -> IndexedDatasetBuilder:
    """An IndexedDatasetBuilder whose index lives in compact arrays (4 + 8 bytes per sequence
    instead of two Python ints), so a billion-token corpus does not grow the writer's memory."""
    builder = IndexedDatasetBuilder(bin_path, dtype=dtype)
    builder.sequence_lengths = array.array("i")
    builder.document_indices = array.array("q", [0])
    return builder


def finalize_builder(builder: IndexedDatasetBuilder, idx_path: str) -> None:
    """IndexedDatasetBuilder.finalize for a builder made by new_builder."""
    builder.data_file.close()
    with _IndexWriterNumpy(idx_path, builder.dtype) as writer:
        writer.write(np.frombuffer(builder.sequence_lengths, dtype=np.int32), None,
                     np.frombuffer(builder.document_indices, dtype=np.int64))


class DatasetWriter:
    """One IndexedDatasetBuilder per output key, writing to ``<prefix>.tmp-<pid>.bin/.idx``.

    ``finalize`` writes the indexes, ``publish`` renames to the final names, ``discard``
    deletes whatever temporary files exist; use it as a context manager to discard on error.
    """

    def __init__(self, prefixes: Dict[str, str], dtypes: Dict[str, type]) -> None:
        self.prefixes = prefixes
        self.temp_prefixes = {k: f"{p}.tmp-{os.getpid()}" for k, p in prefixes.items()}
        self.tokens = {k: 0 for k in prefixes}
        self.documents = 0
        self.builders: Dict[str, IndexedDatasetBuilder] = {
            key: new_builder(get_bin_path(prefix), dtypes[key]) for key, prefix in self.temp_prefixes.items()}

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def add(self, data: Dict[str, KeyData], n_docs: int) -> None:
        """Appends the first ``n_docs`` documents of ``data`` to every key's dataset."""
        for key, builder in self.builders.items():
            d = data[key]
            counts = d.doc_seq_counts[:n_docs]
            n_seqs = int(counts.sum())
            lengths = d.seq_lengths[:n_seqs]
            tokens = d.tokens[:int(lengths.sum())]
            # One write per chunk instead of add_document per document, filling the builder's
            # fields exactly as add_document does.
            builder.data_file.write(tokens.astype(builder.dtype, copy=False).tobytes(order="C"))
            ends = len(builder.sequence_lengths) + np.cumsum(counts)
            builder.sequence_lengths.frombytes(lengths.astype(np.int32).tobytes())
            builder.document_indices.frombytes(ends.astype(np.int64).tobytes())
            self.tokens[key] += len(tokens)
        self.documents += n_docs

    def finalize(self) -> None:
        for key, builder in self.builders.items():
            finalize_builder(builder, get_idx_path(self.temp_prefixes[key]))

    def publish(self) -> List[str]:
        """Renames the finalized files into place; returns the final prefixes."""
        for key, prefix in self.prefixes.items():
            temp = self.temp_prefixes[key]
            os.replace(get_bin_path(temp), get_bin_path(prefix))
            os.replace(get_idx_path(temp), get_idx_path(prefix))
        return list(self.prefixes.values())

    def discard(self) -> None:
        for key, builder in self.builders.items():
            builder.data_file.close()
            for path in (get_bin_path(self.temp_prefixes[key]), get_idx_path(self.temp_prefixes[key])):
                if os.path.exists(path):
                    os.remove(path)

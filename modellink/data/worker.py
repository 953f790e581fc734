"""The per-chunk work: read, parse, tokenize; runs in worker processes (or inline for one).

Results are compact numpy arrays so that sending them back to the writer is cheap.
"""

import argparse
import itertools
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from modellink.data.handlers import Handler, HandlerOptions, Skip, get_handler_class
from modellink.data.readers import Chunk, LineChunk, read_line_chunk
from modellink.data.records import InvalidRecord, parse_line
from modellink.data.tokenizers import build_tokenizer


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker needs to rebuild the tokenizer and handler (picklable)."""

    tokenizer_args: argparse.Namespace
    handler_name: str
    options: HandlerOptions
    skip_bad_records: bool


@dataclass
class KeyData:
    """The documents of one chunk under one output key, flattened."""

    tokens: np.ndarray
    seq_lengths: np.ndarray
    doc_seq_counts: np.ndarray


@dataclass
class ChunkResult:
    """``skips`` and ``error`` hold (record index in chunk, line/row, reason); line numbers of a
    LineChunk are relative to its start (the reader adds the offset)."""

    n_records: int
    n_lines: int
    input_bytes: int
    data: Dict[str, KeyData]
    record_has_doc: np.ndarray
    skips: List[Tuple[int, int, str]] = field(default_factory=list)
    error: Optional[Tuple[int, int, str]] = None


class ChunkProcessor:
    def __init__(self, config: WorkerConfig) -> None:
        self.tokenizer = build_tokenizer(config.tokenizer_args)
        self.handler: Handler = get_handler_class(config.handler_name)(self.tokenizer, config.options)
        self.skip_bad_records = config.skip_bad_records

    def __call__(self, chunk: Chunk) -> ChunkResult:
        if isinstance(chunk, LineChunk):
            lines, n_lines = read_line_chunk(chunk)
            locations = [line for line, _ in lines]
            records = []
            for _, raw in lines:
                try:
                    records.append(parse_line(chunk.fmt, raw))
                except InvalidRecord as err:
                    records.append(err)
            input_bytes = chunk.end - chunk.start
        else:
            records, locations, n_lines, input_bytes = chunk.records, chunk.locations, 0, chunk.input_bytes
        return self._encode(records, locations, n_lines, input_bytes)

    def _encode(self, records, locations, n_lines, input_bytes) -> ChunkResult:
        outcomes = [Skip(str(r), invalid=True) if isinstance(r, InvalidRecord) else None for r in records]
        good = [i for i, o in enumerate(outcomes) if o is None]
        for i, outcome in zip(good, self.handler.encode([records[i] for i in good])):
            outcomes[i] = outcome
        error = None
        skips = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Skip):
                if outcome.invalid and not self.skip_bad_records:
                    error = (i, locations[i], outcome.reason)
                    outcomes = outcomes[:i]
                    break
                skips.append((i, locations[i], outcome.reason))
        documents = [o for o in outcomes if not isinstance(o, Skip)]
        has_doc = np.array([not isinstance(o, Skip) for o in outcomes], dtype=bool)
        return ChunkResult(len(outcomes), n_lines, input_bytes, self._flatten(documents), has_doc, skips, error)

    def _flatten(self, documents) -> Dict[str, KeyData]:
        data = {}
        for key in self.handler.output_keys:
            sequences = [s for d in documents for s in d[key]]
            lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
            tokens = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int32,
                                 count=int(lengths.sum()))
            counts = np.fromiter((len(d[key]) for d in documents), dtype=np.int64, count=len(documents))
            data[key] = KeyData(tokens, lengths, counts)
        return data


# One processor per worker process, built once by the pool initializer so the tokenizer is not
# reloaded (or pickled) for every chunk.
_PROCESSOR: Optional[ChunkProcessor] = None


def init_worker(config: WorkerConfig) -> None:
    global _PROCESSOR
    # Each worker is one core's worth of work; the tokenizer's own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _PROCESSOR = ChunkProcessor(config)


def process_in_worker(chunk: Chunk) -> ChunkResult:
    return _PROCESSOR(chunk)

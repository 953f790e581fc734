"""preprocess_data.py: raw data -> Megatron indexed datasets, streaming.

The main process plans chunks (readers), hands them to ``--workers`` processes that parse and
tokenize (worker), and appends the results in input order (writer), so the output bytes do not
depend on the worker count. At most two chunks per worker are in flight, which keeps memory
flat however large the input is. Outputs appear under their final names only when complete.
"""

import argparse
import logging
import math
import multiprocessing
import os
import sys
from collections import deque
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from megatron.core.datasets.indexed_dataset import DType

from modellink.argument_errors import ArgumentError
from modellink.data import hf_datasets
from modellink.data.handlers import HandlerOptions, get_handler_class
from modellink.data.merge import merge_datasets
from modellink.data.packing import pack_dataset
from modellink.data.preprocess_args import build_parser, validate_args
from modellink.data.progress import Progress, logger
from modellink.data.readers import Chunk, LineChunk, discover_inputs, max_chunks, plan_chunks
from modellink.data.tokenizers import build_tokenizer
from modellink.data.worker import ChunkProcessor, ChunkResult, WorkerConfig, init_worker, process_in_worker
from modellink.data.writer import DatasetWriter, check_outputs_free
from modellink.user_error import UserError

DEFAULT_PACK_SEED = 1234
IN_FLIGHT_PER_WORKER = 2


class PreprocessError(UserError, ValueError):
    """Bad input found while processing; the message names the file and line."""


def _results(chunks: Iterable[Chunk], config: WorkerConfig, workers: int) -> Iterator[Tuple[Chunk, ChunkResult]]:
    """Chunk results in input order."""
    if workers == 1:
        processor = ChunkProcessor(config)
        for chunk in chunks:
            yield chunk, processor(chunk)
        return
    with multiprocessing.Pool(workers, initializer=init_worker, initargs=(config,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(process_in_worker, (chunk,))))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                chunk_done, result = pending.popleft()
                yield chunk_done, result.get()
        while pending:
            chunk_done, result = pending.popleft()
            yield chunk_done, result.get()


def _where(chunk: Chunk, location: int, line_base: int) -> str:
    if isinstance(chunk, LineChunk):
        return f"{chunk.path}:{line_base + location}"
    return f"{chunk.path}:{location}" if chunk.unit == "line" else f"{chunk.path} row {location}"


def _tokenize_all(args: argparse.Namespace, config: WorkerConfig, chunks: Iterable[Chunk],
                  writer: DatasetWriter, progress: Progress) -> None:
    line_base: Dict[str, int] = {}
    for chunk, result in _results(chunks, config, args.workers):
        base = line_base.get(chunk.path, 0)
        allowed = math.inf if args.max_samples is None else args.max_samples - progress.records
        limit = min(result.n_records, allowed)
        if result.error is not None and result.error[0] < allowed:
            _, location, message = result.error
            raise PreprocessError(f"{_where(chunk, location, base)}: {message} "
                                  f"(pass --skip-bad-records to skip and count such records)")
        for index, location, reason in result.skips:
            if index < limit:
                progress.skip(reason, _where(chunk, location, base))
        n_docs = int(np.count_nonzero(result.record_has_doc[:limit]))
        writer.add(result.data, n_docs)
        line_base[chunk.path] = base + result.n_lines
        progress.update(n_docs, limit, result.input_bytes)
        if args.max_samples is not None and progress.records >= args.max_samples:
            break
    if writer.documents == 0:
        logger.info(progress.summary(writer.tokens, []))
        raise PreprocessError(f"no documents to write: {progress.records} records read, "
                              f"{sum(progress.skipped.values())} skipped")


def run(args: argparse.Namespace) -> List[str]:
    """Preprocesses (or merges) as the parsed flags say; returns the output prefixes."""
    validate_args(args)
    if args.merge_group_keys is not None:
        outputs = merge_datasets(args.input, args.output_prefix, args.merge_group_keys, args.overwrite)
        logger.info("Merged into %s", ", ".join(f"{p}.bin/.idx" for p in outputs))
        return outputs

    tokenizer = build_tokenizer(args)
    options = HandlerOptions(
        json_keys=tuple(args.json_keys or ["text"]), append_eod=args.append_eod, seq_length=args.seq_length,
        prompt_type=args.prompt_type, map_keys=args.map_keys, split_sentences=args.split_sentences,
        keep_newlines=args.keep_newlines)
    handler = get_handler_class(args.handler_name)(tokenizer, options)
    use_hf = hf_datasets.wanted(args)
    files = hf_datasets.input_files(args) if use_hf else discover_inputs(args.input)
    if args.n_subs is not None and args.n_subs > args.workers:
        args.workers = args.n_subs
    _cap_workers(args, None if use_hf else files)
    prefixes = {k: f"{args.output_prefix}{handler.prefix_suffix}_{k}_{handler.level}" for k in handler.output_keys}
    check_outputs_free(prefixes.values(), args.overwrite)
    dtype = DType.optimal_dtype(tokenizer.vocab_size) if handler.vocab_dtype else np.int32
    source = args.hf_datasets_params or args.input
    logger.info("Vocab size: %d (padded for training: %d); %s reading %d file(s) from %s%s with %d worker(s)",
                tokenizer.vocab_size, _padded_vocab_size(args, tokenizer.vocab_size), args.handler_name,
                len(files), source,
                " through Hugging Face datasets" if use_hf else "", args.workers)
    total_bytes = sum(os.path.getsize(f) for f in files)
    chunks = (hf_datasets.record_chunks(hf_datasets.load(args), source, total_bytes) if use_hf
              else plan_chunks(files))

    config = WorkerConfig(_tokenizer_args(args), args.handler_name, options, args.skip_bad_records)
    progress = Progress(total_bytes, args.log_interval, args.max_samples)
    if not args.pack:
        with DatasetWriter(prefixes, {k: dtype for k in prefixes}) as writer:
            _tokenize_all(args, config, chunks, writer, progress)
            writer.finalize()
            outputs = writer.publish()
        logger.info(progress.summary(writer.tokens, outputs))
        return outputs

    # Pass 1 writes unpacked samples to temporary files; pass 2 packs them from disk.
    stage_prefixes = {k: f"{prefixes[k]}.unpacked" for k in ("input_ids", "labels")}
    with DatasetWriter(stage_prefixes, {k: dtype for k in stage_prefixes}) as stage:
        try:
            _tokenize_all(args, config, chunks, stage, progress)
            stage.finalize()
            with DatasetWriter(prefixes, {k: dtype for k in prefixes}) as writer:
                packs = pack_dataset(stage.temp_prefixes, args.seq_length, tokenizer.pad,
                                     DEFAULT_PACK_SEED if args.seed is None else args.seed, writer.add)
                writer.finalize()
                outputs = writer.publish()
        finally:
            stage.discard()
    logger.info("Packed %d samples into %d sequences of %d tokens", stage.documents, packs, args.seq_length)
    logger.info(progress.summary(stage.tokens, outputs))
    return outputs


def _padded_vocab_size(args: argparse.Namespace, vocab_size: int) -> int:
    """The embedding size training will use, as Megatron-LM pads it; the data does not change,
    but a --pad-vocab-size-to below the vocabulary is caught here, before hours of training."""
    if args.pad_vocab_size_to is not None:
        if args.pad_vocab_size_to < vocab_size:
            raise ArgumentError(f"--pad-vocab-size-to {args.pad_vocab_size_to} is below the tokenizer's "
                                f"vocabulary of {vocab_size}")
        return args.pad_vocab_size_to
    multiple = args.make_vocab_size_divisible_by
    return -(-vocab_size // multiple) * multiple


def _cap_workers(args: argparse.Namespace, files: Optional[List[str]]) -> None:
    """More workers than CPUs or chunks only add processes (each loads a tokenizer); thousands
    of them exhaust memory and hang the run. ``files`` is None where the chunk count is unknown."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chunks = None if files is None else max_chunks(files)
    useful = min(args.workers, cpus, chunks or args.workers)
    if useful < args.workers:
        logger.info("--workers %d capped to %d (CPUs available: %d, input chunks at most: %s)",
                    args.workers, useful, cpus, chunks or "unknown")
        args.workers = useful


def _tokenizer_args(args: argparse.Namespace) -> argparse.Namespace:
    """Just the tokenizer flags, so what is sent to workers stays small and picklable."""
    names = ("tokenizer_type", "tokenizer_name_or_path", "tokenizer_model", "vocab_file", "merge_file",
             "vocab_size", "tokenizer_not_use_fast", "tokenizer_padding_side", "tokenizer_kwargs")
    return argparse.Namespace(**{n: getattr(args, n) for n in names})


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", stream=sys.stderr)
    try:
        run(build_parser().parse_args(argv))
    except (UserError, OSError) as err:
        sys.exit(f"preprocess_data.py: error: {err}")

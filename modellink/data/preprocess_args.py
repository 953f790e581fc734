"""Command line of preprocess_data.py: ModelLink's flags, and the checks between them."""

import argparse
import json
import os
from typing import Any, Dict

from modellink.argument_errors import ArgumentError
from modellink.data.handlers import HANDLERS, get_handler_class
from modellink.data.templates import TEMPLATES
from modellink.data.tokenizers import add_tokenizer_arguments
from modellink.writable import writable_dir_problem


def _json_object(text: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object: {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Tokenize raw text or instruction data into Megatron indexed datasets (.bin/.idx).")
    group = parser.add_argument_group(title="input data")
    group.add_argument("--input", type=str, required=True,
                       help="A .json/.jsonl/.parquet/.csv/.arrow/.txt file, or a folder of them "
                            "(with --merge-group-keys: the folder of .bin/.idx files to merge).")
    group.add_argument("--handler-name", type=str, default="GeneralPretrainHandler",
                       help=f"One of: {', '.join(HANDLERS)}.")
    group.add_argument("--json-keys", nargs="+", default=None,
                       help="Keys holding the text to tokenize (GeneralPretrainHandler; default: text).")
    group.add_argument("--split-sentences", action="store_true",
                       help="Store each sentence as its own sequence (GeneralPretrainHandler).")
    group.add_argument("--keep-newlines", action="store_true",
                       help="Keep line breaks at the end of split sentences (with --split-sentences).")
    group.add_argument("--prompt-type", type=str, default=None, choices=sorted(TEMPLATES),
                       help="Prompt template for instruction and pairwise handlers.")
    group.add_argument("--map-keys", type=_json_object, default=None,
                       help='Column mapping as JSON, e.g. \'{"prompt": "question", "response": "answer"}\'.')
    group.add_argument("--max-samples", type=_positive, default=None,
                       help="Read only the first N input records.")
    group.add_argument("--seed", type=int, default=None,
                       help="Seed of the packed sequences' order (with --pack; default 1234).")
    group.add_argument("--pack", action="store_true",
                       help="Pack instruction samples into --seq-length sequences.")
    group.add_argument("--skip-bad-records", action="store_true",
                       help="Skip (and count) malformed records instead of stopping at the first one.")

    add_tokenizer_arguments(parser)
    parser.set_defaults(tokenizer_type="PretrainedFromHF")
    group = parser.add_argument_group(title="tokenization")
    group.add_argument("--append-eod", action="store_true",
                       help="Append an <eod> token to the end of a document (or sample).")
    group.add_argument("--seq-length", type=_positive, default=None,
                       help="Maximum sequence length: longer samples are skipped; the --pack length.")

    group = parser.add_argument_group(title="output data")
    group.add_argument("--output-prefix", type=str, required=True,
                       help="Path to binary output file without suffix.")
    group.add_argument("--dataset-impl", type=str, default="mmap", choices=["mmap"],
                       help="Megatron's mmap indexed format, the only one written (kept for old scripts).")
    group.add_argument("--overwrite", action="store_true", help="Replace existing output files.")
    group.add_argument("--merge-group-keys", nargs="+", default=None,
                       help="Merge the .bin/.idx pairs in --input whose names contain each key.")

    group = parser.add_argument_group(title="runtime")
    group.add_argument("--workers", type=_positive, default=1, help="Number of worker processes to launch.")
    group.add_argument("--log-interval", type=_positive, default=100,
                       help="Interval (in documents) between progress updates.")
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Raises ValueError for a flag that has no effect or a missing one, naming it."""
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(out_dir):
        raise ArgumentError(f"--output-prefix: folder {out_dir} does not exist")
    problem = writable_dir_problem(out_dir)
    if problem:
        raise ArgumentError(f"--output-prefix {args.output_prefix}: {problem}")
    if args.merge_group_keys is not None:
        return
    handler = get_handler_class(args.handler_name)
    pretrain = handler.prefix_suffix == ""
    _reject(args.prompt_type is not None and not handler.uses_prompt_type,
            f"--prompt-type does not apply to {args.handler_name}")
    _reject(args.map_keys is not None and not handler.uses_map_keys,
            f"--map-keys does not apply to {args.handler_name}")
    _reject(args.json_keys is not None and not pretrain,
            f"--json-keys applies to GeneralPretrainHandler, not {args.handler_name}")
    _reject(args.split_sentences and not pretrain,
            f"--split-sentences applies to GeneralPretrainHandler, not {args.handler_name}")
    _reject(args.keep_newlines and not args.split_sentences, "--keep-newlines needs --split-sentences")
    _reject(args.pack and not handler.packable, f"--pack does not apply to {args.handler_name}")
    _reject(args.pack and args.seq_length is None, "--pack needs --seq-length")
    _reject(args.seed is not None and not args.pack,
            "--seed only orders packed sequences; it needs --pack")
    _reject(args.seq_length is not None and args.seq_length < 2, "--seq-length must be at least 2")
    _reject(args.seed is not None and args.seed < 0, f"--seed must be >= 0, got {args.seed}")


def _reject(condition: bool, message: str) -> None:
    if condition:
        raise ArgumentError(message)

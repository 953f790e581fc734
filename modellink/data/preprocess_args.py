"""Command line of preprocess_data.py: ModelLink's flags, and the checks between them."""

import argparse
import json
import os
from typing import Any, Dict

from modellink.argument_errors import ArgumentError
from modellink.data.handlers import HANDLERS, get_handler_class
from modellink.data.hf_datasets import STOPPING, input_paths
from modellink.data.templates import TEMPLATES
from modellink.data.tokenizers import add_tokenizer_arguments
from modellink.writable import writable_dir_problem


# ModelLink flags not supported yet -> what ModelLink uses them for (docs/modellink_flags.md
# repeats it; tests/test_modellink_flags.py checks the two agree).
UNSUPPORTED = {
    "--datasets": "merges several already preprocessed datasets",
    "--script-data-dir": "reads the input with a Hugging Face dataset loading script",
    "--reward-tokens": "labels of each reasoning step for process reward models",
}


class _NotSupportedYet(argparse.Action):
    """Fails as soon as argparse meets the flag, before any other check or any work."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str = "") -> None:
        flag = self.option_strings[0]
        raise ArgumentError(f"{flag} (ModelLink: {UNSUPPORTED[flag]}) is not supported yet")


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
    group.add_argument("--input", type=str, default=None,
                       help="A .json/.jsonl/.parquet/.csv/.arrow/.txt file, or a folder of them "
                            "(with --merge-group-keys: the folder of .bin/.idx files to merge); "
                            "several, comma-separated, are mixed by --mix-strategy.")
    group.add_argument("--dataset-dir", type=str, default=None,
                       help="Folder the --input entries are relative to.")
    group.add_argument("--hf-datasets-params", type=str, default=None,
                       help="JSON file of Hugging Face load_dataset() arguments to read the input "
                            "with (instead of --input).")
    group.add_argument("--streaming", action="store_true",
                       help="Read the input with Hugging Face datasets' streaming (no cache written).")
    group.add_argument("--cache-dir", type=str, default=None,
                       help="Hugging Face datasets' cache folder (default: its own, ~/.cache/huggingface/datasets).")
    group.add_argument("--overwrite-cache", action="store_true",
                       help="Rebuild Hugging Face datasets' cache of the input instead of reusing it.")
    group.add_argument("--mix-strategy", type=str, default="concat", choices=sorted(STOPPING) + ["concat"],
                       help="How several --input entries are mixed: concatenated, or interleaved "
                            "until the first runs out (under) or the last does (over).")
    group.add_argument("--interleave-probs", type=str, default=None,
                       help="Comma-separated probabilities of drawing from each --input entry "
                            "(with --mix-strategy interleave_*; seeded by --seed).")
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
                       help="Seed of the packed sequences' order (with --pack) and of "
                            "--interleave-probs (default 1234).")
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
    group.add_argument("--make-vocab-size-divisible-by", type=_positive, default=128,
                       help="Report the vocabulary padded to a multiple of this, as training pads it.")
    group.add_argument("--pad-vocab-size-to", type=_positive, default=None,
                       help="Report the vocabulary padded to exactly this size, as training pads it.")

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
    group.add_argument("--n-subs", type=_positive, default=None,
                       help="Number of parts the input is processed in, in parallel (the larger "
                            "of --workers and --n-subs processes are used).")
    group.add_argument("--log-interval", type=_positive, default=100,
                       help="Interval (in documents) between progress updates.")
    group = parser.add_argument_group("ModelLink flags not supported yet (each is an error)")
    for flag in UNSUPPORTED:
        group.add_argument(flag, nargs="*", action=_NotSupportedYet, help=argparse.SUPPRESS)
    return parser


def validate_args(args: argparse.Namespace) -> None:
    """Raises ValueError for a flag that has no effect or a missing one, naming it."""
    out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
    if not os.path.isdir(out_dir):
        raise ArgumentError(f"--output-prefix: folder {out_dir} does not exist")
    problem = writable_dir_problem(out_dir)
    if problem:
        raise ArgumentError(f"--output-prefix {args.output_prefix}: {problem}")
    _reject(args.input is None and args.hf_datasets_params is None,
            "--input is required (or --hf-datasets-params)")
    _reject(args.input is not None and args.hf_datasets_params is not None,
            "--input and --hf-datasets-params both name the input; give one")
    if args.merge_group_keys is not None:
        return
    _check_mixing(args)
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
    _reject(args.seed is not None and not args.pack and args.interleave_probs is None,
            "--seed orders packed sequences and seeds --interleave-probs; it needs one of them")
    _reject(args.seq_length is not None and args.seq_length < 2, "--seq-length must be at least 2")
    _reject(args.seed is not None and args.seed < 0, f"--seed must be >= 0, got {args.seed}")


def _check_mixing(args: argparse.Namespace) -> None:
    entries = len(input_paths(args))
    _reject(args.hf_datasets_params is not None and (args.dataset_dir is not None or args.streaming
                                                     or args.cache_dir is not None or args.overwrite_cache),
            "--hf-datasets-params holds all load_dataset() arguments; put --dataset-dir, --streaming, "
            "--cache-dir and --overwrite-cache there")
    _reject(args.mix_strategy != "concat" and entries < 2,
            f"--mix-strategy {args.mix_strategy} needs several comma-separated --input entries")
    if args.interleave_probs is None:
        return
    _reject(args.mix_strategy == "concat",
            "--interleave-probs needs --mix-strategy interleave_under or interleave_over")
    try:
        probs = [float(p) for p in args.interleave_probs.split(",")]
    except ValueError:
        raise ArgumentError(f"--interleave-probs {args.interleave_probs}: not comma-separated numbers") from None
    _reject(len(probs) != entries, f"--interleave-probs has {len(probs)} values for {entries} --input entries")
    _reject(any(p < 0 for p in probs) or abs(sum(probs) - 1) > 1e-6,
            f"--interleave-probs {args.interleave_probs}: must be non-negative and sum to 1")


def _reject(condition: bool, message: str) -> None:
    if condition:
        raise ArgumentError(message)

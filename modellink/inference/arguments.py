"""Command line of `inference.py` (and the base of `evaluation.py`'s): the training parser's
model, parallel, precision, tokenizer, checkpoint and fused-operator flags, plus ModelLink's
text-generation flags.

The whole training parser is reused (not a copy of its groups) so that every model flag it
grows reaches inference unchanged; only the flags that describe a training run are made
optional, with the values a forward-only run implies.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Optional, Sequence

from modellink.arguments import ArgumentError, build_parser, validate_args

INFERENCE_TASKS = ("greedy", "do_sample", "beam_search", "beam_search_with_sampling",
                   "return_output_log_probs", "chat")
# Training-only flags that `build_parser` requires; a forward-only run needs no value for them.
_TRAINING_DEFAULTS = {"micro_batch_size": 1, "train_iters": 0, "lr": 0.0}


def _add_once(group: argparse._ArgumentGroup, parser: argparse.ArgumentParser, flag: str,
              **kwargs: object) -> None:
    # The training parser may grow the same flag (e.g. --prompt-type for fine-tuning); its
    # definition then wins rather than clashing with this one.
    if flag not in parser._option_string_actions:
        group.add_argument(flag, **kwargs)


def add_text_generation_args(parser: argparse.ArgumentParser) -> None:
    """The sampling and length flags shared by inference and evaluation."""
    g = parser.add_argument_group("text generation")
    _add_once(g, parser, "--max-new-tokens", type=int, default=128,
              help="tokens to generate after the prompt")
    _add_once(g, parser, "--max-length", type=int, default=256,
              help="longest sequence (prompt + generated tokens); sizes the KV cache")
    # ModelLink's inference.py defaults; evaluation sets its own. Greedy tasks ignore them.
    _add_once(g, parser, "--top-k", type=int, default=50, help="sample from the k best (0: off)")
    _add_once(g, parser, "--top-p", type=float, default=0.95,
              help="sample from the smallest set with this probability mass (0: off)")
    _add_once(g, parser, "--temperature", type=float, default=0.7)
    _add_once(g, parser, "--use-kv-cache", action="store_true",
              help="keep keys/values of earlier tokens instead of recomputing the whole sequence")
    _add_once(g, parser, "--add-eos-token", nargs="+", default=[],
              help="extra tokens that end a reply, e.g. '<|eot_id|>'")
    _add_once(g, parser, "--prompt-type", default=None,
              help="prompt template name (modellink.data.templates), shared with fine-tuning")
    _add_once(g, parser, "--hf-chat-template", action="store_true",
              help="wrap prompts with the Hugging Face tokenizer's chat template")


def add_inference_args(parser: argparse.ArgumentParser) -> None:
    add_text_generation_args(parser)
    g = parser.add_argument_group("inference")
    g.add_argument("--task", nargs="*", default=None, choices=INFERENCE_TASKS,
                   help="what to run (default: every task but chat)")
    g.add_argument("--history-turns", type=int, default=3,
                   help="chat: earlier (question, answer) pairs kept in the prompt")
    g.add_argument("--prompt", default="how are you?",
                   help="the instruction the non-chat tasks answer")
    g.add_argument("--num-beams", type=int, default=2, help="beams of the beam-search tasks")


def build_inference_parser(add_extra: Callable[[argparse.ArgumentParser], None] = add_inference_args
                           ) -> argparse.ArgumentParser:
    parser = build_parser()
    parser.description = "modellink generation, chat and evaluation"
    for action in parser._actions:
        if action.dest in _TRAINING_DEFAULTS:
            action.required = False
            action.default = _TRAINING_DEFAULTS[action.dest]
    add_extra(parser)
    return parser


def parse_inference_args(argv: Optional[Sequence[str]] = None,
                         add_extra: Callable[[argparse.ArgumentParser], None] = add_inference_args,
                         world_size: Optional[int] = None) -> argparse.Namespace:
    """Parse and validate as the training parser does, then check the generation flags."""
    args, unknown = build_inference_parser(add_extra).parse_known_args(argv)
    if unknown:
        raise ArgumentError(f"unrecognized arguments: {' '.join(unknown)}")
    args.world_size = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    # A decode step adds one position, which cannot be split into 2 x CP chunks.
    if args.context_parallel_size != 1:
        raise ArgumentError(f"--context-parallel-size {args.context_parallel_size}: generation "
                            f"and evaluation run without context parallelism; use 1")
    # Forward-only runs read no training data; --data-path still names perplexity's dataset.
    args.mock_data = args.data_path is None
    validate_args(args)
    _validate_generation(args)
    # A decode step feeds one token per sequence, which cannot be split across tensor-parallel
    # ranks; the weights are the same with or without sequence parallelism.
    args.sequence_parallel = False
    args.use_mc2 = False  # MC2 fuses sequence-parallel communication, which is now off
    return args


def _validate_generation(args: argparse.Namespace) -> None:
    if args.load is None:
        raise ArgumentError("--load is required: the Megatron checkpoint to run "
                            "(convert a Hugging Face model with tools/checkpoint/convert_ckpt.py)")
    for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 1),
                             ("--max-length", args.max_length, 2), ("--top-k", args.top_k, 0)):
        if value < low:
            raise ArgumentError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= args.top_p <= 1.0:
        raise ArgumentError(f"--top-p must be in [0, 1], got {args.top_p}")
    if not args.temperature > 0:  # also NaN, which would sample garbage without complaint
        raise ArgumentError(f"--temperature must be > 0, got {args.temperature}")
    if args.position_embedding_type == "learned_absolute" and \
            args.max_length > args.max_position_embeddings:
        raise ArgumentError(f"--max-length {args.max_length} exceeds --max-position-embeddings "
                            f"{args.max_position_embeddings}")
    if getattr(args, "num_beams", 1) < 1:
        raise ArgumentError(f"--num-beams must be >= 1, got {args.num_beams}")
    if getattr(args, "history_turns", 0) < 0:
        raise ArgumentError(f"--history-turns must be >= 0, got {args.history_turns}")

"""`python -m modellink.plan <pretrain flags> --devices N --device-memory 64GB`: the plan of a
run on N devices, printed without building anything; with --inference, inference.py's flags and
the weights plus KV cache of generation; with --search (--top K), the best layouts that fit;
--model <family>-<size> supplies the model zoo's shape flags and its example scripts' layout."""
from __future__ import annotations

import argparse
import re
from typing import List, Optional, Sequence

from modellink.argument_errors import ArgumentError, require
from modellink.arguments import parse_args, validate_args
from modellink.data.tokenizers import build_tokenizer
from modellink.inference.arguments import build_inference_parser
from modellink.models.families import get_size, preset_flags
from modellink.models.families.base import FamilyConfigError
from modellink.plan.memory import estimate
from modellink.plan.report import render, render_inference, render_search
from modellink.plan.search import search
from modellink.training.pretrain import padded_vocab_size

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6,
          "mib": 2**20, "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12,
          "tib": 2**40}


def parse_memory(text: str) -> float:
    """'64GB' (decimal), '64GiB' (binary), '80G', '1.5 TB' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise ArgumentError(f"--device-memory {text!r} is not a memory size such as 64GB or "
                            f"80GiB")
    return float(match.group(1)) * _UNITS[unit]


def _planner_flags(argv: Sequence[str]) -> "tuple[argparse.Namespace, list]":
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--device-memory", default=None)
    parser.add_argument("--inference", action="store_true")
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--model", default=None,
                        help="a model zoo size, e.g. llama2-7b: its shape, vocabulary, parallel "
                             "layout and batch sizes; later flags win")
    return parser.parse_known_args(argv)


def with_padded_vocab(args: argparse.Namespace) -> argparse.Namespace:
    """Pretrain pads the tokenizer's vocabulary; the planner takes --vocab-size or the
    tokenizer the flags name, padded the same way."""
    if args.padded_vocab_size is None:
        vocab = args.vocab_size
        if vocab is None:
            require(args.tokenizer_type is not None,
                    "the planner needs the vocabulary: pass --vocab-size, --padded-vocab-size "
                    "or the run's tokenizer flags")
            vocab = build_tokenizer(args).vocab_size
        args.padded_vocab_size = padded_vocab_size(vocab, args)
    return args


def inference_args(argv: Sequence[str], world_size: int) -> argparse.Namespace:
    """inference.py's flags (--max-length, --micro-batch-size as the batch), validated as the
    training flags are; no checkpoint is needed to plan one."""
    args, unknown = build_inference_parser().parse_known_args(argv)
    if unknown:
        raise ArgumentError(f"unrecognized arguments: {' '.join(unknown)}")
    args.world_size = world_size
    args.mock_data = True
    validate_args(args)
    return args


# What a training command line must have to parse but a plan does not depend on.
_PLAN_ONLY = ["--mock-data", "--train-iters", "1", "--lr", "1e-4"]


def with_model_preset(name: Optional[str], rest: List[str]) -> List[str]:
    """--model llama2-7b: the zoo's shape flags and vocabulary and its example scripts'
    parallel layout and batch sizes (recomputation is the user's to add), then the user's
    flags, which win where both set one."""
    if name is None:
        return rest
    try:
        size = get_size(name)[1]
        return (preset_flags(name) + ["--vocab-size", str(size.vocab)] + _PLAN_ONLY
                + size.layout.flags(recompute=False) + rest)
    except FamilyConfigError as error:
        raise ArgumentError(f"--model: {error}") from None


def main(argv: Optional[Sequence[str]] = None) -> None:
    own, rest = _planner_flags(argv)
    rest = with_model_preset(own.model, rest)
    if own.devices is None or own.devices < 1:
        raise ArgumentError("--devices N (the number of devices of the run, N >= 1) is required")
    memory = parse_memory(own.device_memory) if own.device_memory is not None else None
    if own.search:
        if memory is None:
            raise ArgumentError("--search needs --device-memory (the layouts listed must fit it)")
        layouts = search(rest, own.devices, memory,
                         lambda flags: with_padded_vocab(parse_args(flags, world_size=own.devices)))
        print(render_search(layouts, own.devices, memory, own.top), flush=True)
        return
    if own.inference:
        args = with_padded_vocab(inference_args(rest, own.devices))
        print(render_inference(args, estimate(args), memory), flush=True)
        return
    args = with_padded_vocab(parse_args(rest, world_size=own.devices))
    print(render(args, estimate(args), memory), flush=True)

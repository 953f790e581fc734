"""`python -m modellink.plan <pretrain flags> --devices N --device-memory 64GB`: the plan of a
run on N devices, printed without building anything."""
from __future__ import annotations

import argparse
import re
from typing import Optional, Sequence

from modellink.argument_errors import ArgumentError, require
from modellink.arguments import parse_args
from modellink.data.tokenizers import build_tokenizer
from modellink.plan.memory import estimate
from modellink.plan.report import render
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    own, rest = _planner_flags(argv)
    if own.devices is None or own.devices < 1:
        raise ArgumentError("--devices N (the number of devices of the run, N >= 1) is required")
    memory = parse_memory(own.device_memory) if own.device_memory is not None else None
    args = with_padded_vocab(parse_args(rest, world_size=own.devices))
    print(render(args, estimate(args), memory), flush=True)

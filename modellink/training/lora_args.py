"""ModelLink's LoRA flags, added to the training parser by modellink.arguments, and their
checks against the rest of the command line."""
from __future__ import annotations

import argparse
import os
from typing import List

from modellink.argument_errors import ArgumentError

LORA_TARGETS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
# Megatron-LM's legacy module names, which older ModelLink scripts pass.
LEGACY_TARGETS = {"query_key_value": "linear_qkv", "dense": "linear_proj",
                  "dense_h_to_4h": "linear_fc1", "dense_4h_to_h": "linear_fc2"}
MODULES_TO_SAVE = ("word_embeddings", "output_layer")


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LoRA (ModelLink)")
    g.add_argument("--lora-target-modules", nargs="+", default=[],
                   help=f"linears that get LoRA adapters ({', '.join(LORA_TARGETS)}); "
                        f"the rest of the model is frozen")
    g.add_argument("--lora-r", type=int, default=None, help="adapter rank (default 16)")
    g.add_argument("--lora-alpha", type=int, default=None,
                   help="adapter output is scaled by lora_alpha / lora_r (default 32)")
    g.add_argument("--lora-load", default=None,
                   help="adapter checkpoint to continue from (--load holds the base model)")
    g.add_argument("--lora-fusion", action="store_true",
                   help="compute each adapted linear's base and A projections as one GEMM "
                        "(x @ [W; A]^T; tensor-parallel size 1)")
    g.add_argument("--lora-register-forward-hook", nargs="+",
                   default=["word_embeddings", "input_layernorm"],
                   help="modules whose outputs are made to require grad, so that with "
                        "--recompute-granularity full the adapters of recomputed layers get "
                        "gradients although the embeddings are frozen (ModelLink's default)")
    g.add_argument("--lora-modules-to-save", nargs="+", default=None,
                   help=f"modules trained in full and saved with the adapters "
                        f"({', '.join(MODULES_TO_SAVE)})")


def canonical_targets(names: List[str]) -> List[str]:
    """megatron-core names, legacy ones translated, each once; unknown names are an error."""
    targets = []
    for name in names:
        target = LEGACY_TARGETS.get(name, name)
        if target not in LORA_TARGETS:
            raise ArgumentError(f"--lora-target-modules: unknown module {name!r}; use "
                                f"megatron-core names: {', '.join(LORA_TARGETS)}")
        if target not in targets:
            targets.append(target)
    return targets


def _check_lora_load(path: str) -> None:
    from modellink.training.checkpoint.checkpointing import TRACKER_FILENAME

    if not os.path.isdir(path):
        raise ArgumentError(f"--lora-load {path} does not exist (a directory of adapter "
                            f"checkpoints saved by a LoRA run)")
    if os.listdir(path) and not os.path.isfile(os.path.join(path, TRACKER_FILENAME)):
        raise ArgumentError(f"--lora-load {path} is not a checkpoint directory "
                            f"(no {TRACKER_FILENAME})")


def validate_lora_args(args: argparse.Namespace) -> None:
    if not args.lora_target_modules:
        for flag, value in (("--lora-r", args.lora_r), ("--lora-alpha", args.lora_alpha),
                            ("--lora-load", args.lora_load),
                            ("--lora-modules-to-save", args.lora_modules_to_save),
                            ("--lora-fusion", args.lora_fusion or None)):
            if value is not None:
                raise ArgumentError(f"{flag} needs --lora-target-modules")
        return
    args.lora_target_modules = canonical_targets(args.lora_target_modules)
    args.lora_r = 16 if args.lora_r is None else args.lora_r  # ModelLink's defaults
    args.lora_alpha = 32 if args.lora_alpha is None else args.lora_alpha
    if args.lora_r < 1:
        raise ArgumentError(f"--lora-r must be >= 1, got {args.lora_r}")
    if args.lora_alpha <= 0:
        raise ArgumentError(f"--lora-alpha must be > 0, got {args.lora_alpha}")
    if getattr(args, "multi_head_latent_attention", False) and \
            "linear_qkv" in args.lora_target_modules:
        # Its query and key/value projections are separate low-rank linears that LoRA does
        # not wrap; the target would silently adapt nothing.
        raise ArgumentError("--lora-target-modules linear_qkv: multi-head latent attention "
                            "(--multi-head-latent-attention) has no linear_qkv; its LoRA "
                            "target is linear_proj")
    mlp = [t for t in args.lora_target_modules if t.startswith("linear_fc")]
    if mlp and args.num_experts is not None:
        raise ArgumentError(f"--lora-target-modules {' '.join(mlp)}: LoRA on MoE expert "
                            f"layers (--num-experts) is not supported")
    to_save = list(dict.fromkeys(args.lora_modules_to_save or []))
    unknown = [m for m in to_save if m not in MODULES_TO_SAVE]
    if unknown:
        raise ArgumentError(f"--lora-modules-to-save: unknown module {unknown[0]!r}; use "
                            f"{' or '.join(MODULES_TO_SAVE)}")
    if to_save and not args.untie_embeddings_and_output_weights:
        # Tied: one weight is both, and a pipeline's copies must train together.
        to_save = list(MODULES_TO_SAVE)
    args.lora_modules_to_save = to_save or None
    if args.lora_fusion and args.tensor_model_parallel_size > 1:
        # Split across ranks, A's or B's gradient would need a sum the fused GEMM skips.
        raise ArgumentError(f"--lora-fusion needs --tensor-model-parallel-size 1, got "
                            f"{args.tensor_model_parallel_size}")
    if args.lora_load is not None:
        _check_lora_load(args.lora_load)


def check_adapter_flags(saved: argparse.Namespace, args: argparse.Namespace, path: str) -> None:
    """The LoRA flags must be those the adapters at `path` were trained with: a different
    --lora-alpha fits the weights' shapes and would silently rescale every adapter."""
    trained = getattr(saved, "lora_target_modules", None)
    if not trained:
        raise ArgumentError(f"--lora-load {path} holds no LoRA adapters (it was not saved by "
                            f"a run with --lora-target-modules)")
    if sorted(args.lora_target_modules) != sorted(trained):
        raise ArgumentError(f"--lora-target-modules {' '.join(args.lora_target_modules)} does "
                            f"not match the adapters at {path}, which were trained on "
                            f"{' '.join(trained)}")
    for flag, name in (("--lora-r", "lora_r"), ("--lora-alpha", "lora_alpha")):
        if getattr(args, name) != getattr(saved, name):
            raise ArgumentError(f"{flag} {getattr(args, name)} does not match the adapters at "
                                f"{path}, which were trained with {flag} {getattr(saved, name)}")

"""`--use-checkpoint-args`: the model is described by the `--load` checkpoint, not the flags.

As Megatron-LM's `load_args_from_checkpoint`, before anything else is validated: the sizes a
run may leave out (layers, widths, heads, sequence length, vocabulary) are taken from the
arguments saved in the checkpoint when the command line does not give them, and the flags
that decide what the weights mean (normalization, activation, position embedding, biases,
attention groups, tied embeddings, ...) are always the checkpoint's. Only the latest
checkpoint's first rank file is opened, memory-mapped: its tensors are never read.
"""
from __future__ import annotations

import argparse
import os
from typing import List

from modellink.argument_errors import ArgumentError
from modellink.checkpoint.safe_load import load_pt
from modellink.training.checkpoint.checkpointing import (
    MODEL_FILENAME,
    CheckpointError,
    iteration_dir,
    read_tracker,
)

# Taken from the checkpoint only where the command line leaves them out (Megatron-LM's
# non-forced ones); `vocab_size` is the size of the NullTokenizer's vocabulary.
FILLED = ("num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads",
          "kv_channels", "max_position_embeddings", "tokenizer_type", "vocab_size",
          "padded_vocab_size")
# Always the checkpoint's: they change what the saved weights compute, not only their shapes.
FORCED = ("num_query_groups", "group_query_attention", "position_embedding_type",
          "rotary_base", "rotary_percent", "rotary_interleaved", "add_bias_linear",
          "add_qkv_bias", "add_dense_bias", "swiglu", "untie_embeddings_and_output_weights",
          "normalization", "norm_epsilon", "apply_query_key_layer_scaling", "qk_layernorm",
          "num_experts", "moe_ffn_hidden_size", "moe_router_topk", "moe_router_pre_softmax",
          "moe_shared_expert_intermediate_size", "shared_expert_gate",
          "multi_head_latent_attention", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
          "qk_nope_head_dim", "v_head_dim", "n_shared_experts", "first_k_dense_replace",
          "moe_layer_freq", "routed_scaling_factor", "norm_topk_prob")


def checkpoint_args_file(args: argparse.Namespace) -> str:
    """The first rank file of the latest checkpoint under --load."""
    if args.load is None:
        raise ArgumentError("--use-checkpoint-args needs --load DIR: the checkpoint whose "
                            "saved arguments describe the model")
    iteration = read_tracker(args.load)
    folder = iteration_dir(args.load, iteration) if iteration is not None else ""
    ranks = sorted(name for name in os.listdir(folder) if name.startswith("mp_rank_")
                   ) if os.path.isdir(folder) else []
    if not ranks:
        raise CheckpointError(f"--use-checkpoint-args: --load {args.load} holds no checkpoint "
                              f"to take the model's arguments from")
    return os.path.join(folder, ranks[0], MODEL_FILENAME)


def load_args_from_checkpoint(args: argparse.Namespace) -> List[str]:
    """Set the model's arguments from the --load checkpoint; returns what changed, one
    `name value` entry each, for the start-up log."""
    path = checkpoint_args_file(args)
    saved = load_pt(path, CheckpointError, mmap=True).get("args")
    if not isinstance(saved, argparse.Namespace):
        raise CheckpointError(f"--use-checkpoint-args: {path} holds no saved arguments")
    changed = []
    for name in FILLED + FORCED:
        value = getattr(saved, name, None)
        if value is None or (name in FILLED and getattr(args, name, None) is not None):
            continue
        if getattr(args, name, None) != value:
            changed.append(f"{name} {value}")
        setattr(args, name, value)
    return changed

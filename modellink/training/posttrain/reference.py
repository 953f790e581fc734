"""DPO's reference model: frozen, in the policy's parallel layout, with no optimizer.

Without LoRA it is a second set of model chunks built from the same flags, holding the
weights --load gave the policy (copied, not read again) or those of --ref-model. With LoRA it
is the policy itself with its adapters disabled, so the base weights are held once.
"""
from __future__ import annotations

import argparse
import copy
from contextlib import nullcontext
from types import SimpleNamespace
from typing import ContextManager, List, Optional

import torch
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.argument_errors import ArgumentError
from modellink.models.gpt import build_model_chunks
from modellink.models.lora import adapters_disabled, lora_enabled
from modellink.training.checkpoint.checkpointing import CheckpointError, load_checkpoint


class Reference:
    """`chunk(i, policy_chunk)` is the module that computes the reference for the policy's
    i-th model chunk, to be called under `context(i)`."""

    def __init__(self, chunks: Optional[List[torch.nn.Module]]) -> None:
        self.chunks = chunks  # None: LoRA, the policy with adapters off

    def chunk(self, index: int, policy_chunk: torch.nn.Module) -> torch.nn.Module:
        return policy_chunk if self.chunks is None else self.chunks[index]

    def context(self, policy_chunk: torch.nn.Module) -> ContextManager:
        return adapters_disabled(policy_chunk) if self.chunks is None else nullcontext()


def build_reference(args: argparse.Namespace, config: TransformerConfig,
                    model: List[torch.nn.Module], loaded_iteration: int) -> Reference:
    """`model` is the policy, its checkpoint already loaded at `loaded_iteration`."""
    if lora_enabled(args):
        return Reference(None)
    if args.ref_model is None and loaded_iteration > 0:
        raise ArgumentError(f"--stage dpo resumes from iteration {loaded_iteration} of --load "
                            f"{args.load}: its weights are no longer the reference; pass "
                            f"--ref-model with the checkpoint the run started from")
    chunks = build_model_chunks(args, config)
    if args.device != "cpu":
        chunks = [chunk.cuda() for chunk in chunks]
    if args.fp16 or args.bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    if args.ref_model is None:
        for chunk, policy in zip(chunks, model):
            chunk.load_state_dict(policy.module.state_dict())
    else:
        ref_args = copy.copy(args)
        ref_args.load, ref_args.finetune = args.ref_model, True
        try:
            # Shaped like the policy's DDP chunks, which the loader unwraps once.
            load_checkpoint(ref_args, [SimpleNamespace(module=c) for c in chunks], None, None)
        except CheckpointError as exc:
            raise CheckpointError(f"--ref-model {args.ref_model}: {exc}") from None
    for chunk in chunks:
        chunk.eval()
        chunk.requires_grad_(False)
    return Reference(chunks)

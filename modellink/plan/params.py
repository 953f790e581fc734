"""Parameter counts of one rank's slice of the model, per pipeline stage, from the flags alone.

Each count mirrors what `modellink.models.gpt.build_model_chunks` allocates (megatron-core's
GPTModel with our layer specs), so the planner's bytes equal the built model's tensor bytes;
tests/test_plan.py holds the two side by side.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from modellink.argument_errors import ArgumentError
from modellink.models.lora import lora_enabled


@dataclass(frozen=True)
class StageParams:
    """Elements one rank of a pipeline stage holds, split by which ranks share their optimizer
    state: dense parameters (data x context parallel) and MoE experts (expert data parallel).
    Routers count as dense: megatron-core makes them fp32, but Float16Module casts them."""
    dense: int
    experts: int


def _norm(args: argparse.Namespace, width: int) -> int:
    return width * (2 if args.normalization == "LayerNorm" else 1)


def _gated(args: argparse.Namespace) -> int:
    return 2 if args.swiglu or args.geglu else 1


def _mlp(args: argparse.Namespace, ffn: int, tp: int) -> int:
    """fc1 (doubled when gated) and fc2, column- then row-parallel; fc2's bias is replicated."""
    h, width = args.hidden_size, ffn * _gated(args) // tp
    bias = (width + h) if args.add_bias_linear else 0
    return h * width + (ffn // tp) * h + bias


def layer_params(args: argparse.Namespace) -> Tuple[int, int]:
    """(dense, expert) elements of one transformer layer on one rank."""
    h, tp = args.hidden_size, args.tensor_model_parallel_size
    d = args.kv_channels or h // args.num_attention_heads
    qkv = (args.num_attention_heads + 2 * args.num_query_groups) * d // tp
    attention = h * qkv + (args.num_attention_heads * d // tp) * h
    attention += qkv if args.add_bias_linear or args.add_qkv_bias else 0
    attention += h if args.add_bias_linear or args.add_dense_bias else 0
    attention += 2 * _norm(args, d) if args.qk_layernorm else 0
    norms = _norm(args, h) * (4 if args.post_norm else 2)
    if args.num_experts is None:
        return attention + norms + _mlp(args, args.ffn_hidden_size, tp), 0
    dense = attention + norms + args.num_experts * h  # the router
    shared = args.moe_shared_expert_intermediate_size
    if shared is not None:
        dense += _mlp(args, shared, tp) + (h if args.shared_expert_gate else 0)
    local_experts = args.num_experts // args.expert_model_parallel_size
    # megatron-core shards experts over its expert tensor-parallel size, which defaults to TP.
    experts = local_experts * _mlp(args, args.moe_ffn_hidden_size, tp)
    return dense, experts


def stage_layers(args: argparse.Namespace) -> List[List[int]]:
    """Layer counts of each pipeline stage's model chunks (one chunk per virtual stage)."""
    pp = args.pipeline_model_parallel_size
    if args.pipeline_layers is not None:
        return [[n] for n in args.pipeline_layers]
    vpp = args.virtual_pipeline_model_parallel_size or 1
    return [[args.num_layers // pp // vpp] * vpp for _ in range(pp)]


def stage_params(args: argparse.Namespace, stage: int) -> StageParams:
    """One rank of pipeline stage `stage` (0-based): its layers, plus the embedding on the
    first stage and the final norm and output layer on the last. With tied embeddings and more
    than one stage, the last stage holds its own copy of the embedding as the output weight."""
    if lora_enabled(args):
        raise ArgumentError("--lora-r: the memory planner does not model LoRA adapters; plan the "
                            "full model (without --lora-*) for an upper bound")
    h, tp, pp = args.hidden_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    layers = sum(stage_layers(args)[stage])
    dense, experts = (n * layers for n in layer_params(args))
    vocab_slice = _padded_vocab(args) // tp * h
    if stage == 0:
        dense += vocab_slice
        dense += args.max_position_embeddings * h if args.position_embedding_type == "learned_absolute" else 0
        dense += _norm(args, h) if args.embed_layernorm else 0
    if stage == pp - 1:
        dense += _norm(args, h)
        if args.untie_embeddings_and_output_weights or pp > 1:
            dense += vocab_slice
    return StageParams(dense=dense, experts=experts)


def _padded_vocab(args: argparse.Namespace) -> int:
    vocab: Optional[int] = args.padded_vocab_size
    if vocab is None:
        raise ArgumentError("the planner needs the vocabulary size: pass --padded-vocab-size, "
                            "--vocab-size or a tokenizer")
    return vocab

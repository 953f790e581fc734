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
from modellink.models.moe import moe_layer_pattern


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


def _latent_attention(args: argparse.Namespace) -> int:
    """megatron-core's MLASelfAttention: bias-free column-parallel projections (queries
    directly or through the --q-lora-rank latent, the key/value latent with the shared RoPE
    key), the latents' norms (with --qk-layernorm; replicated) and the output projection."""
    h, tp, heads = args.hidden_size, args.tensor_model_parallel_size, args.num_attention_heads
    qk = args.qk_nope_head_dim + args.qk_rope_head_dim
    norm = _norm if args.qk_layernorm else (lambda _, width: 0)
    q_rank, kv_rank = args.q_lora_rank, args.kv_lora_rank
    if q_rank is None:
        query = h * (heads * qk // tp)
    else:
        query = h * (q_rank // tp) + norm(args, q_rank) + q_rank * (heads * qk // tp)
    key_value = (h * ((kv_rank + args.qk_rope_head_dim) // tp) + norm(args, kv_rank)
                 + kv_rank * (heads * (args.qk_nope_head_dim + args.v_head_dim) // tp))
    projection = heads * args.v_head_dim // tp * h
    return query + key_value + projection + (h if args.add_bias_linear else 0)


def _attention(args: argparse.Namespace) -> int:
    if args.multi_head_latent_attention:
        return _latent_attention(args)
    h, tp = args.hidden_size, args.tensor_model_parallel_size
    d = args.kv_channels or h // args.num_attention_heads
    qkv = (args.num_attention_heads + 2 * args.num_query_groups) * d // tp
    attention = h * qkv + (args.num_attention_heads * d // tp) * h
    attention += qkv if args.add_bias_linear or args.add_qkv_bias else 0
    attention += h if args.add_bias_linear or args.add_dense_bias else 0
    return attention + (2 * _norm(args, d) if args.qk_layernorm else 0)


def layer_params(args: argparse.Namespace, moe: bool = True) -> Tuple[int, int]:
    """(dense, expert) elements of one transformer layer on one rank; `moe` False: an MoE
    model's dense layer (DeepSeek's first layers)."""
    h, tp = args.hidden_size, args.tensor_model_parallel_size
    attention = _attention(args)
    norms = _norm(args, h) * (4 if args.post_norm else 2)
    if args.num_experts is None or not moe:
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


def stage_layer_ids(args: argparse.Namespace, stage: int) -> List[int]:
    """The model's indices (from 0) of the layers pipeline stage `stage` holds: with virtual
    stages, chunk c of stage s holds the (c x PP + s)-th run of layers."""
    pp = args.pipeline_model_parallel_size
    if args.pipeline_layers is not None:
        start = sum(args.pipeline_layers[:stage])
        return list(range(start, start + args.pipeline_layers[stage]))
    vpp = args.virtual_pipeline_model_parallel_size or 1
    per_chunk = args.num_layers // pp // vpp
    return [(chunk * pp + stage) * per_chunk + i for chunk in range(vpp)
            for i in range(per_chunk)]


def stage_moe_layers(args: argparse.Namespace, stage: int) -> List[bool]:
    """Per layer of the stage, whether it is an MoE layer (--first-k-dense-replace and
    --moe-layer-freq leave some dense)."""
    pattern = moe_layer_pattern(args) if args.num_experts is not None else None
    return [bool(pattern and pattern[i]) for i in stage_layer_ids(args, stage)]


def stage_params(args: argparse.Namespace, stage: int) -> StageParams:
    """One rank of pipeline stage `stage` (0-based): its layers, plus the embedding on the
    first stage and the final norm and output layer on the last. With tied embeddings and more
    than one stage, the last stage holds its own copy of the embedding as the output weight."""
    if lora_enabled(args):
        raise ArgumentError("--lora-r: the memory planner does not model LoRA adapters; plan the "
                            "full model (without --lora-*) for an upper bound")
    h, tp, pp = args.hidden_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    moe = stage_moe_layers(args, stage)
    per_kind = {is_moe: layer_params(args, is_moe) for is_moe in set(moe)}
    dense = sum(per_kind[is_moe][0] for is_moe in moe)
    experts = sum(per_kind[is_moe][1] for is_moe in moe)
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

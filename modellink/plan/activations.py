"""Activation bytes per micro-batch and in flight, after Korthikanti et al., "Reducing
Activation Recomputation in Large Transformer Models" (2022), generalised to our layers.

The paper's GPT layer stores sbh(34 + 5as/h) bytes in 16 bits: 10sbh that tensor parallelism
leaves whole (two norm inputs, the QKV and fc1 inputs, two dropout masks), 24sbh it splits
(Q, K, V, the projection input, fc1's output and the GELU output) and 5as^2b of attention
scores (softmax output, dropout mask and output). Here each term follows the flags and what
megatron-core 0.16 with our layer specs really saves for backward (tests/plan_probe.py measures
it): GQA shrinks K and V, RoPE adds the rotated Q and K, the norms and the gated MLP keep what
their implementation keeps, zero dropout stores no masks, --use-flash-attn keeps only the softmax
log-sum-exp instead of the scores; sequence parallelism splits the whole-tensor terms over TP too;
context parallelism divides s. The last stage adds the final norm and the cross-entropy's fp32
softmax; the first stage the embedding dropout mask.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Dict

from modellink.plan.params import stage_moe_layers


@dataclass(frozen=True)
class ActivationPlan:
    """Per rank of one stage: `per_microbatch` bytes kept for the backward pass of one
    micro-batch, `in_flight` micro-batches the 1F1B schedule holds at its peak, the
    `recompute_peak` of the micro-batch whose backward rebuilds a full-recompute group: by then
    backward has freed the output layer, the loss and every layer after that group, and holds
    the recomputed layers' tensors next to the kept group inputs (0 without full recompute)."""
    per_microbatch: int
    in_flight: float
    recompute_peak: int
    layer_terms: Dict[str, float]

    @property
    def total(self) -> int:
        last = max(self.per_microbatch, self.recompute_peak)
        return round(self.per_microbatch * (self.in_flight - 1) + last)


def _width(args: argparse.Namespace) -> int:
    return 2 if args.bf16 or args.fp16 else 4


def _mask_bytes(args: argparse.Namespace) -> int:
    """A dropout mask's bytes per element: torch's CPU dropout multiplies by a mask in the
    input's dtype; the CUDA and NPU kernels keep a byte (or less) per element."""
    return _width(args) if args.device == "cpu" else 1


def _norm_bytes(args: argparse.Namespace) -> int:
    """Per element of a norm's input, what the norm and the linear after it keep: LayerNorm and
    the fused RMSNorm kernels keep the input, the linear the output; the reference RMSNorm
    (fp32 statistics) also keeps its fp32 input copy and the normalised value."""
    w = _width(args)
    if args.normalization == "RMSNorm" and not args.use_fused_rmsnorm:
        return 4 + 2 * w  # in fp32 the fp32 copy is the input itself: 3w either way
    return 2 * w


def _mlp_bytes(args: argparse.Namespace, ffn: int) -> int:
    """Per token, one MLP's fc1 output and activation tensors: megatron-core's unfused GLU
    keeps the gate's activation, the linear half plus its offset and their product (3 x ffn);
    the fused SwiGLU keeps only the product, and on CPU the gate's activation too (ops/swiglu.py);
    recomputing the activation keeps fc1's output."""
    w, gated = _width(args), 2 if args.swiglu or args.geglu else 1
    fc1 = w * ffn * gated
    if args.recompute_activation_function:
        return fc1
    if gated == 1:
        return fc1 + w * ffn
    if args.use_fused_swiglu and args.num_experts is None:
        return fc1 + (2 if args.device == "cpu" else 1) * w * ffn
    return fc1 + 3 * w * ffn


def _sdpa_upcasts(args: argparse.Namespace) -> bool:
    """MLA's unfused path is torch SDPA, whose CPU math path computes 16-bit inputs in fp32
    (and keeps the fp32 copies, not the inputs)."""
    return (args.multi_head_latent_attention and not args.use_flash_attn
            and args.device == "cpu" and _width(args) == 2)


def _latent_attention_terms(args: argparse.Namespace) -> Dict[str, float]:
    """Per token, what megatron-core's MLASelfAttention keeps: the latents (gathered whole
    over TP) with their norms, and per head Q and K of nope + rope channels, the up-projected
    keys/values (the values are views of them) and the projection input. The rotated RoPE
    channels are concatenated into Q and K, so they add nothing of their own."""
    t, w, heads = args.tensor_model_parallel_size, _width(args), args.num_attention_heads
    qk, v = args.qk_nope_head_dim + args.qk_rope_head_dim, args.v_head_dim
    norm = _norm_bytes(args) - w if args.qk_layernorm else 0  # beyond the linear's input
    latent = w * (args.kv_lora_rank + args.qk_rope_head_dim) + norm * args.kv_lora_rank
    if args.q_lora_rank is not None:
        latent += (w + norm) * args.q_lora_rank
    terms = {"query and key/value latents with their norms (whole under TP)": latent}
    if _sdpa_upcasts(args):
        terms["projection input; fp32 Q, K and V of torch SDPA's CPU math path"] = (
            w * heads * v + 4 * heads * (2 * qk + v)) / t
    else:
        terms["Q, K, up-projected keys/values and projection input"] = \
            w * heads * (2 * qk + args.qk_nope_head_dim + 2 * v) / t
    return terms


def layer_terms(args: argparse.Namespace, moe: bool = True) -> Dict[str, float]:
    """Bytes one layer keeps per token on one rank, by term, before any full recompute;
    `moe` False: an MoE model's dense layer."""
    h, t, w = args.hidden_size, args.tensor_model_parallel_size, _width(args)
    whole = t if args.sequence_parallel else 1  # SP splits the tensors TP would leave whole
    d = args.kv_channels or h // args.num_attention_heads
    heads, groups = args.num_attention_heads, args.num_query_groups
    s = args.seq_length // args.context_parallel_size
    modules = set(args.recompute_modules or ["core_attn"]) \
        if args.recompute_granularity == "selective" else set()
    masks = 2 * h * _mask_bytes(args) if args.hidden_dropout > 0 else 0
    terms = {"two norms with the QKV and fc1 inputs, dropout masks (whole under TP)":
             (2 * _norm_bytes(args) * h + masks) / whole}
    if args.multi_head_latent_attention:
        terms.update(_latent_attention_terms(args))
    else:
        terms["Q, K, V and projection input"] = w * (2 * heads * d + 2 * groups * d) / t
        if args.qk_layernorm:
            terms["Q and K norm outputs and statistics"] = (heads + groups) * (w * d + 8) / t
        if args.position_embedding_type == "rope":
            terms["rotated Q and K"] = w * (heads + groups) * d / t
    if "core_attn" not in modules:
        if args.use_flash_attn:
            terms["softmax log-sum-exp (flash attention)"] = 4 * heads / t
        else:
            kept = 4 if _sdpa_upcasts(args) else w
            scores = kept + (_mask_bytes(args) + kept if args.attention_dropout > 0 else 0)
            terms["attention scores (the 5as/h term)"] = scores * heads * s / t
    if args.num_experts is None or not moe:
        ffn, routed = args.ffn_hidden_size, 1
    else:
        ffn, routed = args.moe_ffn_hidden_size, args.moe_router_topk
        # Each routed copy of a token: its hidden state as fc1's input, and the activation
        # scaled by the router probability (fc2's input).
        terms["tokens dispatched to experts, probability-scaled activation"] = \
            routed * w * (h / whole + ffn / t)
    if not modules & {"mlp", "moe"}:
        terms["fc1 output and activation"] = routed * _mlp_bytes(args, ffn) / t
    if args.moe_shared_expert_intermediate_size is not None and moe:
        gate = w * h / whole if args.shared_expert_gate else 0  # the output the gate scales
        terms["shared expert"] = _mlp_bytes(args, args.moe_shared_expert_intermediate_size) / t \
            + gate
    return terms


def _head(args: argparse.Namespace, stage: int) -> float:
    """Per token, what the last stage's final norm, output layer and loss keep: the norm with
    the output layer's input, and the cross-entropy's fp32 softmax over this rank's vocabulary.
    The 16-bit logits themselves are not kept (the loss works on an fp32 copy)."""
    if stage != args.pipeline_model_parallel_size - 1:
        return 0.0
    whole = args.tensor_model_parallel_size if args.sequence_parallel else 1
    return (_norm_bytes(args) * args.hidden_size / whole
            + 4 * args.padded_vocab_size / args.tensor_model_parallel_size)


def _embedding_mask(args: argparse.Namespace, stage: int) -> float:
    """Per token, the first stage's embedding dropout mask."""
    whole = args.tensor_model_parallel_size if args.sequence_parallel else 1
    dropout = stage == 0 and args.hidden_dropout > 0
    return args.hidden_size * _mask_bytes(args) / whole if dropout else 0.0


def _in_flight(args: argparse.Namespace, stage: int) -> float:
    """Micro-batches whose activations a rank holds at the 1F1B peak: PP - stage (warm-up
    forwards plus the current one), capped by the number of micro-batches. Interleaved (VPP v)
    counts model chunks: megatron-core warms up 2(PP - stage - 1) + (v - 1)PP chunk forwards,
    each holding 1/v of the stage's layers."""
    pp, m = args.pipeline_model_parallel_size, args.num_microbatches
    vpp = args.virtual_pipeline_model_parallel_size or 1
    if vpp == 1:
        return min(pp - stage, m)
    chunks = 2 * (pp - stage - 1) + (vpp - 1) * pp + 1
    return min(chunks, m * vpp) / vpp


def activation_plan(args: argparse.Namespace, stage: int) -> ActivationPlan:
    terms = layer_terms(args)
    tokens = args.seq_length // args.context_parallel_size * args.micro_batch_size
    # Per layer of the stage (an MoE model's dense layers keep less).
    moe = stage_moe_layers(args, stage)
    per_kind = {is_moe: sum(layer_terms(args, is_moe).values()) * tokens for is_moe in set(moe)}
    per_layer = [per_kind[is_moe] for is_moe in moe]
    layers = len(per_layer)
    w, h = _width(args), args.hidden_size
    whole = args.tensor_model_parallel_size if args.sequence_parallel else 1
    layer_input = w * h / whole * tokens
    first = _embedding_mask(args, stage) * tokens
    kept, recompute = sum(per_layer), 0.0
    if args.recompute_granularity == "full":
        n = min(args.recompute_num_layers, layers)
        if args.recompute_method == "uniform":
            # Each group of n layers keeps only its input; backward rebuilds one group at a time,
            # the last group first, while every group's input is still held.
            groups = math.ceil(layers / n)
            rebuilt = max((sum(per_layer[i:i + n]) for i in range(0, layers, n)), default=0)
            kept, recompute = groups * layer_input, groups * layer_input + rebuilt
        else:
            # The first n layers keep their inputs and are rebuilt one at a time, after backward
            # has gone through (and freed) the layers stored whole.
            kept = n * layer_input + sum(per_layer[n:])
            recompute = n * layer_input + max(per_layer[:n], default=0)
        recompute += first
    per_microbatch = kept + _head(args, stage) * tokens + first
    return ActivationPlan(per_microbatch=round(per_microbatch), in_flight=_in_flight(args, stage),
                          recompute_peak=round(recompute), layer_terms=terms)

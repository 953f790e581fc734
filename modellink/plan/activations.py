"""Activation bytes per micro-batch and in flight, after Korthikanti et al., "Reducing
Activation Recomputation in Large Transformer Models" (2022), generalised to our layers.

The paper's GPT layer stores sbh(34 + 5as/h) bytes in 16 bits: 10sbh that tensor parallelism
leaves whole (two norm inputs, the QKV and fc1 inputs, two dropout masks), 24sbh it splits
(Q, K, V, the projection input, fc1's output and the GELU output) and 5as^2b of attention
scores (softmax output, dropout mask and output). Here each term follows the flags: GQA shrinks
K and V, a gated MLP doubles fc1's output, zero dropout stores no masks, --use-flash-attn keeps
only the softmax log-sum-exp instead of the scores; sequence parallelism splits the whole-tensor
terms over TP too; context parallelism divides s. The last stage adds the logits and the
cross-entropy's fp32 softmax; the first stage the embedding dropout mask.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Dict

from modellink.plan.params import stage_layers


@dataclass(frozen=True)
class ActivationPlan:
    """Per rank of one stage: `per_microbatch` bytes kept for the backward pass of one
    micro-batch, `in_flight` micro-batches the 1F1B schedule holds at its peak, and the
    `working_set` full recompute rebuilds for one layer group during backward."""
    per_microbatch: int
    in_flight: int
    working_set: int
    layer_terms: Dict[str, float]

    @property
    def total(self) -> int:
        return self.per_microbatch * self.in_flight + self.working_set


def _width(args: argparse.Namespace) -> int:
    return 2 if args.bf16 or args.fp16 else 4


def layer_terms(args: argparse.Namespace) -> Dict[str, float]:
    """Bytes one layer keeps per token on one rank, by term, before any full recompute."""
    h, t, w = args.hidden_size, args.tensor_model_parallel_size, _width(args)
    whole = t if args.sequence_parallel else 1  # SP splits the tensors TP would leave whole
    d = args.kv_channels or h // args.num_attention_heads
    heads, groups = args.num_attention_heads, args.num_query_groups
    s = args.seq_length // args.context_parallel_size
    modules = set(args.recompute_modules or ["core_attn"]) \
        if args.recompute_granularity == "selective" else set()
    masks = 2 * h if args.hidden_dropout > 0 else 0
    terms = {"norm, QKV and fc1 inputs, dropout masks (whole under TP)": (4 * w * h + masks) / whole,
             "Q, K, V and projection input": w * (2 * heads * d + 2 * groups * d) / t}
    if "core_attn" not in modules:
        if args.use_flash_attn:
            terms["softmax log-sum-exp (flash attention)"] = 4 * heads / t
        else:
            scores = w + (1 + w if args.attention_dropout > 0 else 0)
            terms["attention scores (the 5as/h term)"] = scores * heads * s / t
    gated = 2 if args.swiglu or args.geglu else 1
    if args.num_experts is None:
        ffn, routed = args.ffn_hidden_size, 1
    else:
        ffn, routed = args.moe_ffn_hidden_size, args.moe_router_topk
        terms["tokens dispatched to experts"] = routed * w * h / whole
    mlp = w * ffn * gated + (0 if args.recompute_activation_function or "moe_act" in modules
                             else w * ffn)
    if not modules & {"mlp", "moe"}:
        terms["fc1 output and activation output"] = routed * mlp / t
    if args.moe_shared_expert_intermediate_size is not None:
        terms["shared expert"] = w * args.moe_shared_expert_intermediate_size * (gated + 1) / t
    return terms


def _extras(args: argparse.Namespace, stage: int) -> float:
    """Per token: the embedding's dropout mask (first stage); final norm and output-layer
    inputs, 16-bit logits and the cross-entropy's fp32 softmax (last stage)."""
    h, t, w = args.hidden_size, args.tensor_model_parallel_size, _width(args)
    whole = t if args.sequence_parallel else 1
    extra = 0.0
    if stage == 0 and args.hidden_dropout > 0:
        extra += h / whole
    if stage == args.pipeline_model_parallel_size - 1:
        extra += 2 * w * h / whole + (w + 4) * args.padded_vocab_size / t
    return extra


def _in_flight(args: argparse.Namespace, stage: int) -> int:
    """Micro-batches whose activations a rank holds at the 1F1B peak: PP - stage (warm-up
    forwards plus the current one), capped by the number of micro-batches."""
    return min(args.pipeline_model_parallel_size - stage, args.num_microbatches)


def activation_plan(args: argparse.Namespace, stage: int) -> ActivationPlan:
    terms = layer_terms(args)
    tokens = args.seq_length // args.context_parallel_size * args.micro_batch_size
    layer = sum(terms.values()) * tokens
    layers = sum(stage_layers(args)[stage])
    w, h = _width(args), args.hidden_size
    whole = args.tensor_model_parallel_size if args.sequence_parallel else 1
    layer_input = w * h / whole * tokens
    working = 0.0
    kept = layer * layers
    if args.recompute_granularity == "full":
        n = min(args.recompute_num_layers, layers)
        if args.recompute_method == "uniform":
            # Each group of n layers keeps only its input; backward rebuilds one group at a time.
            kept, working = math.ceil(layers / n) * layer_input, n * layer
        else:
            kept, working = n * layer_input + (layers - n) * layer, layer
    per_microbatch = kept + _extras(args, stage) * tokens
    return ActivationPlan(per_microbatch=round(per_microbatch), in_flight=_in_flight(args, stage),
                          working_set=round(working), layer_terms=terms)

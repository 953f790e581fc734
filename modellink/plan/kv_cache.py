"""KV cache of generation per rank: megatron-core's StaticInferenceContext, which
modellink/inference fills, preallocates keys and values of every layer of the rank's stage for
the whole batch and --max-length, over the rank's share of the key/value heads."""
from __future__ import annotations

import argparse

from modellink.plan.params import stage_layers


def kv_cache_bytes(args: argparse.Namespace, stage: int) -> int:
    """2 (K and V) x layers of the stage x kv heads / TP x head dim x max-length x batch
    (--micro-batch-size) x the weights' bytes per element."""
    h, tp = args.hidden_size, args.tensor_model_parallel_size
    head_dim = args.kv_channels or h // args.num_attention_heads
    width = 2 if args.bf16 or args.fp16 else 4
    layers = sum(stage_layers(args)[stage])
    return (2 * layers * (args.num_query_groups // tp) * head_dim * args.max_length
            * args.micro_batch_size * width)

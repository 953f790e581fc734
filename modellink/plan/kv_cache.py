"""KV cache of generation per rank: megatron-core's StaticInferenceContext, which
modellink/inference fills, preallocates keys and values of every layer of the rank's stage for
the whole batch and --max-length, over the rank's share of the key/value heads."""
from __future__ import annotations

import argparse

from modellink.plan.params import stage_layers


def kv_cache_bytes(args: argparse.Namespace, stage: int) -> int:
    """Layers of the stage x kv heads / TP x (key + value width) x max-length x batch
    (--micro-batch-size) x the weights' bytes per element. Multi-head latent attention caches
    megatron-core's up-projected keys (nope + rope channels) and values per head, not the
    latent."""
    h, tp = args.hidden_size, args.tensor_model_parallel_size
    if args.multi_head_latent_attention:
        key_value = args.qk_nope_head_dim + args.qk_rope_head_dim + args.v_head_dim
    else:
        key_value = 2 * (args.kv_channels or h // args.num_attention_heads)
    width = 2 if args.bf16 or args.fp16 else 4
    layers = sum(stage_layers(args)[stage])
    return (layers * (args.num_query_groups // tp) * key_value * args.max_length
            * args.micro_batch_size * width)

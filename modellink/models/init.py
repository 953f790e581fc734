"""Parameter initialisation that does not depend on the parallel layout.

Each weight is drawn from a generator seeded by (seed, global parameter name, layer/expert
index) over its full, unsharded shape, and each rank keeps its slice. TP=2, PP=2 or EP=2 runs
therefore start from exactly the model a single process would build; megatron-core's own
initialisation depends on the layout, which makes layouts impossible to compare.
"""
from __future__ import annotations

import math
import zlib
from typing import Iterator, List

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.transformer.transformer_config import TransformerConfig

# Megatron scales the init of layers that write into the residual stream by 1/sqrt(2L).
_RESIDUAL_OUTPUT_WEIGHTS = ("linear_proj.weight", "linear_fc2.weight")


def _sharded_tensors(chunk: torch.nn.Module) -> Iterator[ShardedTensor]:
    sharded = chunk.sharded_state_dict()
    apply_factories(sharded)
    for value in nested_values(sharded):
        if isinstance(value, ShardedTensor) and value.data is not None:
            yield value


def _std(key: str, config: TransformerConfig) -> float:
    if key.endswith(_RESIDUAL_OUTPUT_WEIGHTS):
        return config.init_method_std / math.sqrt(2.0 * config.num_layers)
    return config.init_method_std


@torch.no_grad()
def init_layout_independent(model_chunks: List[torch.nn.Module], config: TransformerConfig,
                            seed: int) -> None:
    """Overwrite every matrix weight in place; norms and biases keep their constant init."""
    for chunk in model_chunks:
        for tensor in _sharded_tensors(chunk):
            local = tensor.data
            if local.dim() < 2:
                continue
            prepend = tensor.prepend_axis_num
            outer = tensor.global_offset[:prepend]  # layer / expert index of this slice
            name = f"{seed}:{tensor.key}:{outer}"
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            full = torch.empty(tensor.global_shape[prepend:], dtype=torch.float32)
            full.normal_(0.0, _std(tensor.key, config), generator=generator)
            index = tuple(
                slice(offset, offset + size)
                for offset, size in zip(tensor.global_offset[prepend:], local.shape)
            )
            local.copy_(full[index].to(local.dtype))

"""KV-cache decoding that walks the layers' weights directly, for the common dense layout.

A one-token step through megatron-core's module chain (GPTModel, TransformerBlock, the layer,
the attention, its static inference context) spends as much time in Python glue and cache
re-layout as in small GEMMs: the context keeps keys/values as [s, b, heads, d], so attention
at batch > 1 reads them strided, and the rotary table is rebuilt every step. This walk makes
the same calls that compute numbers (the model's embedding and output modules with their
hooks, each layer's norm modules, activation, rotary operator and core attention, and the
GEMMs the forward-only patches reduce megatron-core's linears to) in the same order, with no
glue in between, and keeps keys/values in a preallocated [b, groups, s, d] block per layer
(the layout SDPA reads) written in place.

`LayerWalk.of` accepts only what it reproduces exactly: one pipeline stage and one
tensor-parallel rank, RoPE (megatron-core's or `--use-fused-rotary-pos-emb`'s), and layers
that are plain `DecodingTransformerLayer`s (no MoE, no biases, no QK norm, no gated
attention); any other model keeps the module path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.identity_op import IdentityOp

from modellink.models.decoding_layer import DecodingTransformerLayer
from modellink.ops.attention import FlashSelfAttention
from modellink.ops.mlp import ActivationMLP
from modellink.ops.rotary import REFERENCE, RotaryFn
from modellink.ops.rotary_attention import RotarySelfAttention


class DecodingCache:
    """Keys and values [layers, b, groups, max_length, d] and how many positions are filled."""

    def __init__(self, layers: int, batch: int, groups: int, max_length: int, dim: int,
                 dtype: torch.dtype, device: torch.device, freqs: torch.Tensor) -> None:
        shape = (layers, batch, groups, max_length, dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.freqs = freqs  # the rotary angles of positions 0..max_length-1, built once
        self.sequence_len_offset = 0

    def increment_sequence_len_offset(self, count: int) -> None:
        self.sequence_len_offset += count

    def swap_key_value_dict(self, rows: torch.Tensor) -> None:
        """Row i continues the sequence row `rows[i]` held (beam search's reordering)."""
        rows = rows.to(self.keys.device)
        self.keys = self.keys.index_select(1, rows)
        self.values = self.values.index_select(1, rows)


@dataclass
class _Layer:
    module: DecodingTransformerLayer
    rotary: RotaryFn  # the operator this layer's attention rotates query and key with
    mscale: float
    activation: Callable[[torch.Tensor], torch.Tensor]
    qkv: torch.Tensor
    proj: torch.Tensor
    fc1: torch.Tensor
    fc2: torch.Tensor


class LayerWalk:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.layers = [_Layer(layer, *_rotary(layer.self_attention), layer.mlp._activation,
                              layer.self_attention.linear_qkv.weight,
                              layer.self_attention.linear_proj.weight,
                              layer.mlp.linear_fc1.weight, layer.mlp.linear_fc2.weight)
                       for layer in model.decoder.layers]
        attention = model.decoder.layers[0].self_attention
        self.heads = attention.num_attention_heads_per_partition
        self.groups = attention.num_query_groups_per_partition
        self.dim = attention.hidden_size_per_attention_head

    @classmethod
    def of(cls, chunks: List[torch.nn.Module]) -> Optional["LayerWalk"]:
        """The walk for this model, or None when it has a feature the walk does not run."""
        if (len(chunks) != 1 or parallel_state.get_tensor_model_parallel_world_size() != 1
                or parallel_state.get_pipeline_model_parallel_world_size() != 1
                or parallel_state.get_context_parallel_world_size() != 1):
            return None
        model = chunks[0]
        config = model.config
        if (getattr(model, "position_embedding_type", None) != "rope"
                or type(getattr(model, "rotary_pos_emb", None)) is not RotaryEmbedding
                or model.rotary_pos_emb.rotary_interleaved or config.add_bias_linear
                or config.add_qkv_bias or config.attention_output_gate or config.flash_decode
                or config.sequence_parallel or config.fp32_residual_connection
                or model.decoder.final_layernorm is None or getattr(model, "mtp_process", False)):
            return None
        return cls(model) if all(_plain_layer(layer) for layer in model.decoder.layers) else None

    def new_cache(self, batch: int, max_length: int) -> DecodingCache:
        first = self.layers[0].qkv
        return DecodingCache(len(self.layers), batch, self.groups, max_length, self.dim,
                             first.dtype, first.device, self.model.rotary_pos_emb(max_length))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: DecodingCache
                ) -> torch.Tensor:
        """Logits [b, 1, padded vocab] of the last of `tokens` [b, s], which continue `cache`."""
        start, length = cache.sequence_len_offset, tokens.shape[1]
        end = start + length
        freqs = cache.freqs[start:end]
        hidden = self.model.embedding(input_ids=tokens, position_ids=positions)
        for index, layer in enumerate(self.layers):
            attention = layer.module.self_attention
            query, key, value = self._qkv(layer.module.input_layernorm(hidden), layer.qkv)
            query = layer.rotary(query, freqs, layer.mscale)
            key = layer.rotary(key, freqs, layer.mscale)
            keys, values = cache.keys[index], cache.values[index]
            keys[:, :, start:end] = key.permute(1, 2, 0, 3)
            values[:, :, start:end] = value.permute(1, 2, 0, 3)
            # [s, b, groups, d] views of the filled positions, as core attention takes them.
            context = attention.core_attention(
                query, keys[:, :, :end].permute(2, 0, 1, 3),
                values[:, :, :end].permute(2, 0, 1, 3), None,
                attn_mask_type=attention.attn_mask_type)
            hidden = hidden + F.linear(context, layer.proj)
            intermediate = F.linear(layer.module.pre_mlp_layernorm(hidden), layer.fc1)
            hidden = hidden + F.linear(layer.activation(intermediate), layer.fc2)
        last = self.model.decoder.final_layernorm(hidden[-1:])
        weight = (self.model.shared_embedding_or_output_weight()
                  if self.model.share_embeddings_and_output_weights else None)
        logits, _ = self.model.output_layer(last, weight=weight, runtime_gather_output=True)
        return logits.transpose(0, 1)

    def _qkv(self, hidden: torch.Tensor, weight: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """megatron-core's split of the fused projection: per group, its query heads, then one
        key head and one value head."""
        sq, batch = hidden.shape[:2]
        per_group = self.heads // self.groups
        mixed = F.linear(hidden, weight).view(sq, batch, self.groups, (per_group + 2) * self.dim)
        query, key, value = torch.split(mixed, [per_group * self.dim, self.dim, self.dim], dim=3)
        return query.reshape(sq, batch, self.heads, self.dim), key, value


def _rotary(attention: SelfAttention) -> Tuple[RotaryFn, float]:
    """megatron-core's own attention rotates with its reference function (which REFERENCE
    is), keys included: it caches them unrotated and rotates them at every step, position by
    position, so rotating each key once before caching gives the same numbers."""
    if isinstance(attention, RotarySelfAttention):
        return attention._rotary.fn, attention._mscale
    return REFERENCE.fn, _yarn_get_concentration_factor_from_config(attention.config)


def _plain_layer(layer: torch.nn.Module) -> bool:
    attention = getattr(layer, "self_attention", None)
    return (type(layer) is DecodingTransformerLayer and layer._plain
            and type(attention) in (SelfAttention, RotarySelfAttention)
            and isinstance(attention.core_attention, FlashSelfAttention)
            and isinstance(attention.q_layernorm, IdentityOp)
            and isinstance(attention.k_layernorm, IdentityOp)
            and type(layer.mlp) is ActivationMLP)

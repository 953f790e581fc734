"""megatron-core's SelfAttention with RoPE applied by modellink's rotary operator
(`--use-fused-rotary-pos-emb`).

megatron-core applies RoPE through a module-level function with no hook between the QKV
projection and core attention, and its fused option needs Transformer Engine. This subclass
hands megatron-core's forward no rotary embedding and rotates query and key itself right after
the projection, which is where megatron-core would; that also keeps the rotation outside the
selective core-attention checkpoint.

With a static-batching KV cache, megatron-core caches keys unrotated and rotates the whole
cached history again at every decoding step; here the new keys are rotated once, at their
positions, before they are cached (what Hugging Face caches too), so a step rotates only the
new tokens. Those decoding steps also take a short forward (projection, cache, core attention,
output projection: the steps megatron-core's forward takes for a static cache, without the
training-only branches between them, which measured ~8% of a CPU decoding step). Other
inference contexts keep megatron-core's own path.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.attention import SelfAttention

from modellink.ops.rotary import REFERENCE, RotaryImpl


class RotarySelfAttention(SelfAttention):
    def __init__(self, *args: Any, rotary: RotaryImpl = REFERENCE, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rotary = rotary
        # YaRN's attention factor, read from the config exactly as megatron-core's path reads it.
        self._mscale = _yarn_get_concentration_factor_from_config(self.config)
        # Set and cleared by forward() only: the (query, key) embeddings of the call in
        # progress and the position of its first token (non-zero when continuing a KV cache).
        self._pending_rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        self._pending_offset = 0

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                *args: Any, rotary_pos_emb: Any = None, inference_context: Any = None,
                **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        static_cache = inference_context is not None and inference_context.is_static_batching()
        if (rotary_pos_emb is None or (inference_context is not None and not static_cache)
                or args or kwargs.get("inference_params") is not None
                or kwargs.get("packed_seq_params") is not None):
            return super().forward(hidden_states, attention_mask, *args,
                                   rotary_pos_emb=rotary_pos_emb,
                                   inference_context=inference_context, **kwargs)
        if not isinstance(rotary_pos_emb, tuple):
            rotary_pos_emb = (rotary_pos_emb, rotary_pos_emb)
        self._pending_rotary = rotary_pos_emb
        self._pending_offset = inference_context.sequence_len_offset if static_cache else 0
        try:
            if static_cache and self._plain_decoding(kwargs):
                return self._decode(hidden_states, attention_mask, inference_context)
            return super().forward(hidden_states, attention_mask, rotary_pos_emb=None,
                                   inference_context=inference_context, **kwargs)
        finally:
            self._pending_rotary = None

    def _plain_decoding(self, kwargs: dict) -> bool:
        config = self.config
        return (not self.training and not torch.is_grad_enabled() and not config.flash_decode
                and not config.attention_output_gate
                and all(value is None for value in kwargs.values()))

    def _decode(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                inference_context: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        query, key, value = self.get_query_key_value_tensors(hidden_states, None)
        query, key, value, _, mask_type, _ = self._adjust_key_value_for_inference(
            inference_context, query, key, value, None)
        output = self.core_attention(query, key, value, attention_mask, attn_mask_type=mask_type,
                                     attention_bias=None, packed_seq_params=None)
        return self.linear_proj(output)

    def get_query_key_value_tensors(self, *args: Any, **kwargs: Any) -> Any:
        tensors = super().get_query_key_value_tensors(*args, **kwargs)
        if self._pending_rotary is None:
            return tensors
        query, key, *rest = tensors
        # The embeddings cover every position from 0; the new tokens start at the offset.
        positions = slice(self._pending_offset, self._pending_offset + query.shape[0])
        q_freqs, k_freqs = (freqs[positions] for freqs in self._pending_rotary)
        query = self._rotary.fn(query, q_freqs, self._mscale)
        key = self._rotary.fn(key, k_freqs, self._mscale)
        return (query, key, *rest)

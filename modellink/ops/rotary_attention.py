"""megatron-core's SelfAttention with RoPE applied by modellink's rotary operator
(`--use-fused-rotary-pos-emb`).

megatron-core applies RoPE through a module-level function with no hook between the QKV
projection and core attention, and its fused option needs Transformer Engine. This subclass
hands megatron-core's forward no rotary embedding and rotates query and key itself right after
the projection, which is where megatron-core would; that also keeps the rotation outside the
selective core-attention checkpoint. Inference (a KV cache offsets the positions) keeps
megatron-core's own path.
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
        # The embedding of the forward call in progress; set and cleared by forward() only.
        self._pending_rotary: Optional[Tuple[torch.Tensor, torch.Tensor]] = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                *args: Any, rotary_pos_emb: Any = None, inference_context: Any = None,
                **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if (rotary_pos_emb is None or inference_context is not None or args
                or kwargs.get("inference_params") is not None
                or kwargs.get("packed_seq_params") is not None):
            return super().forward(hidden_states, attention_mask, *args,
                                   rotary_pos_emb=rotary_pos_emb,
                                   inference_context=inference_context, **kwargs)
        if not isinstance(rotary_pos_emb, tuple):
            rotary_pos_emb = (rotary_pos_emb, rotary_pos_emb)
        self._pending_rotary = rotary_pos_emb
        try:
            return super().forward(hidden_states, attention_mask, rotary_pos_emb=None, **kwargs)
        finally:
            self._pending_rotary = None

    def get_query_key_value_tensors(self, *args: Any, **kwargs: Any) -> Any:
        tensors = super().get_query_key_value_tensors(*args, **kwargs)
        if self._pending_rotary is None:
            return tensors
        query, key, *rest = tensors
        q_freqs, k_freqs = self._pending_rotary
        query = self._rotary.fn(query, q_freqs, self._mscale)
        key = self._rotary.fn(key, k_freqs, self._mscale)
        return (query, key, *rest)

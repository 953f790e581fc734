"""megatron-core's TransformerLayer with a short forward for KV-cache generation.

megatron-core's layer forward serves training features (recompute, activation offloading,
cross attention, fused TP inference kernels, MoE overlap) through a dozen checks and context
managers per call; in one-token decoding steps on CPU that Python glue measured ~10% of a
step (bench/generate.py). When none of those features can be active (eval mode, no grad, a
static KV cache, a dense MLP, no cross attention), `forward` runs the same submodules in the
same order with the same bias-dropout-add, so results are unchanged; otherwise it is
megatron-core's forward.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.transformer_layer import TransformerLayer

# Layer-call arguments the short forward handles: any other one that is set means a feature
# only megatron-core's forward implements.
_HANDLED = frozenset({"context", "rotary_pos_emb"})


class DecodingTransformerLayer(TransformerLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = self.config
        self._plain = (isinstance(self.cross_attention, IdentityOp) and not self.is_moe_layer
                       and not config.inference_fuse_tp_communication
                       and config.mlp_chunks_for_prefill <= 1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                inference_context: Any = None, **kwargs: Any
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self._decoding(inference_context, kwargs):
            return super().forward(hidden_states=hidden_states, attention_mask=attention_mask,
                                   inference_context=inference_context, **kwargs)
        fused = self.config.bias_dropout_fusion
        attention = self.self_attention(
            self.input_layernorm(hidden_states), attention_mask=attention_mask,
            inference_context=inference_context, rotary_pos_emb=kwargs.get("rotary_pos_emb"))
        hidden_states = self.self_attn_bda(False, fused)(attention, hidden_states,
                                                         self.hidden_dropout)
        mlp = self.mlp(self.pre_mlp_layernorm(hidden_states))
        return (self.mlp_bda(False, fused)(mlp, hidden_states, self.hidden_dropout),
                kwargs.get("context"))

    def _decoding(self, inference_context: Any, kwargs: dict) -> bool:
        return (self._plain and not self.training and not torch.is_grad_enabled()
                and inference_context is not None and inference_context.is_static_batching()
                and all(value is None for key, value in kwargs.items() if key not in _HANDLED))

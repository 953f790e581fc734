"""Gemma 2's sandwich norms (`--post-norm`): besides the usual pre-norms, the attention output
and the MLP output are each normalised before they join the residual stream.

megatron-core's TransformerLayer has no slot for these; the subclass builds them as submodules
(`post_attn_norm`, `post_mlp_layernorm`, ModelLink's names) and wraps the layer's
bias-dropout-add steps so each norm runs on its branch's output first. The layer's forward,
recompute and sharded_state_dict stay megatron-core's (plus DecodingTransformerLayer's short
forward for KV-cache decoding, which calls the same wrapped bias-dropout-add steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from modellink.models.decoding_layer import DecodingTransformerLayer

BiasDropoutAdd = Callable[[bool, bool], Callable[..., torch.Tensor]]


@dataclass
class SandwichLayerSubmodules(TransformerLayerSubmodules):
    post_attn_norm: Union[ModuleSpec, type] = IdentityOp
    post_mlp_layernorm: Union[ModuleSpec, type] = IdentityOp


def _norm_first(bda: BiasDropoutAdd, norm: torch.nn.Module) -> BiasDropoutAdd:
    """bias-dropout-add of norm(output + bias) instead of output + bias."""
    def get(training: bool, fused: bool) -> Callable[..., torch.Tensor]:
        inner = bda(training, fused)

        def apply(output_with_bias: Tuple[torch.Tensor, Optional[torch.Tensor]],
                  residual: torch.Tensor, prob: float) -> torch.Tensor:
            output, bias = output_with_bias
            if bias is not None:
                output = output + bias
            return inner((norm(output), None), residual, prob)
        return apply
    return get


class SandwichNormLayer(DecodingTransformerLayer):
    def __init__(self, config: TransformerConfig, submodules: SandwichLayerSubmodules,
                 **kwargs: Any) -> None:
        super().__init__(config, submodules, **kwargs)
        norm_args = dict(config=self.config, hidden_size=self.config.hidden_size,
                         eps=self.config.layernorm_epsilon)
        self.post_attn_norm = build_module(submodules.post_attn_norm, **norm_args)
        self.post_mlp_layernorm = build_module(submodules.post_mlp_layernorm, **norm_args)
        self.self_attn_bda = _norm_first(self.self_attn_bda, self.post_attn_norm)
        self.mlp_bda = _norm_first(self.mlp_bda, self.post_mlp_layernorm)

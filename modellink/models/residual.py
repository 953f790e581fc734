"""Megatron-LM's two residual-stream flags, which megatron-core 0.16.1's TransformerLayer
does not act on (it only reads `fp32_residual_connection` to cast the embeddings).

- `--apply-residual-connection-post-layernorm` (Megatron-LM's GPT / Bloom-era models): each
  sub-block adds its output to its layer norm's output instead of to the norm's input.
  megatron-core's layer takes the residual before its norm and has no hook between the two,
  so `PostLayerNormResidualLayer` wraps the layer's bias-dropout-add steps to normalise the
  residual they are given. That runs each of the two norms twice per layer (a norm is about
  1% of a layer's work) but keeps megatron-core's forward, recompute and offloading paths
  intact, and the norm's output is bit-identical both times.
- `--fp32-residual-connection` (under --fp16/--bf16): the residual stream stays fp32.
  megatron-core's bias-dropout-add casts the residual to the branch output's dtype;
  `fp32_residual_bias_dropout_add` casts the branch output to the residual's dtype instead,
  and the norms (modellink/ops/norm.py) take the fp32 stream and return the params dtype.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from modellink.models.decoding_layer import DecodingTransformerLayer

OutputWithBias = Tuple[torch.Tensor, Optional[torch.Tensor]]
BiasDropoutAdd = Callable[[bool, bool], Callable[..., torch.Tensor]]


def fp32_residual_bias_dropout_add(training: bool, fused: bool
                                   ) -> Callable[[OutputWithBias, torch.Tensor, float],
                                                 torch.Tensor]:
    """megatron-core's bias-dropout-add, summed in the residual's dtype (fp32)."""
    inner = get_bias_dropout_add(training, fused)

    def apply(output_with_bias: OutputWithBias, residual: torch.Tensor,
              prob: float) -> torch.Tensor:
        output, bias = output_with_bias
        return inner((output.to(residual.dtype), bias), residual, prob)
    return apply


def _residual_through(bda: BiasDropoutAdd, norm: torch.nn.Module) -> BiasDropoutAdd:
    """bias-dropout-add onto norm(residual) instead of the residual."""
    def get(training: bool, fused: bool) -> Callable[..., torch.Tensor]:
        inner = bda(training, fused)

        def apply(output_with_bias: OutputWithBias, residual: torch.Tensor,
                  prob: float) -> torch.Tensor:
            return inner(output_with_bias, norm(residual), prob)
        return apply
    return get


class PostLayerNormResidualLayer(DecodingTransformerLayer):
    def __init__(self, config: TransformerConfig, submodules: TransformerLayerSubmodules,
                 **kwargs: Any) -> None:
        super().__init__(config, submodules, **kwargs)
        self.self_attn_bda = _residual_through(self.self_attn_bda, self.input_layernorm)
        self.mlp_bda = _residual_through(self.mlp_bda, self.pre_mlp_layernorm)

"""megatron-core's dense MLP with a chosen activation operator and optional activation recompute.

Used when `--use-fused-swiglu` or `--recompute-activation-function` is on; otherwise the layer spec
keeps megatron-core's MLP. Activation recompute (ModelLink's --recompute-activation-function)
frees the activation's output right after linear_fc2 has consumed it and recomputes it from
linear_fc1's output when linear_fc2's backward needs it, so only fc1's output stays alive.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from megatron.core.tensor_parallel.random import CheckpointWithoutOutput
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig


class ActivationMLP(MLP):
    def __init__(self, config: TransformerConfig, submodules: MLPSubmodules,
                 activation: Callable[[torch.Tensor], torch.Tensor],
                 recompute_activation: bool = False, **kwargs: object) -> None:
        super().__init__(config, submodules, **kwargs)
        self._activation = activation
        self._recompute_activation = recompute_activation

    def forward(self, hidden_states: torch.Tensor, per_token_scale: Optional[torch.Tensor] = None,
                **kwargs: object) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if per_token_scale is not None:
            raise ValueError("ActivationMLP is the dense MLP; MoE experts keep megatron-core's")
        intermediate, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            intermediate = intermediate + bias
        if not (self._recompute_activation and torch.is_grad_enabled()):
            return self.linear_fc2(self._activation(intermediate))
        # fp8=None: megatron-core reads any other value (even False) as "use TE's fp8 path".
        checkpoint = CheckpointWithoutOutput(fp8=None)
        activated = checkpoint.checkpoint(self._activation, intermediate)
        output, output_bias = self.linear_fc2(activated)
        checkpoint.discard_output_and_register_recompute(output)
        return output, output_bias

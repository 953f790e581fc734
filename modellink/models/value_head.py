"""The reward model's scalar value head: a [1, hidden] weight without bias (Hugging Face's
LlamaForSequenceClassification `score`) in place of the language-model output layer.

It takes GPTModel's `output_layer` slot, so megatron-core's forward runs unchanged (final norm,
then this head, then [b, s, 1] scores with no labels) and the weight is saved and loaded as
`output_layer.weight`, the slot Hugging Face fills with `score.weight` instead of
`lm_head.weight`. The head is replicated over tensor-parallel ranks: every rank sees the whole
hidden state, so every rank computes the same scores and the same weight gradient, and
megatron-core (which reduces only tensor- or sequence-parallel parameters over that group)
keeps the replicas equal. With sequence parallelism the hidden state arrives split along the
sequence; it is gathered with a backward that hands each rank its own slice of the gradient
(not the reduce-scatter a vocabulary-split output layer needs, which would count it TP times).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Tuple

import torch
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

OUTPUT = "output_layer.weight"


def is_reward_model(args: argparse.Namespace) -> bool:
    return getattr(args, "stage", None) == "rm"


class ValueHead(torch.nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.sequence_parallel = config.sequence_parallel
        self.weight = torch.nn.Parameter(torch.empty(1, config.hidden_size,
                                                     dtype=config.params_dtype))
        # The default generator is seeded alike on every tensor-parallel rank of a stage.
        config.init_method(self.weight.data)

    def forward(self, hidden: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """GPTModel's output-layer call: [s, b, h] -> ([s, b, 1], no bias). `weight` is the
        tied embedding, which a reward model never uses (it is built untied)."""
        if self.sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden,
                                                          tensor_parallel_output_grad=False)
        return torch.nn.functional.linear(hidden, self.weight), None


def attach_value_head(model: torch.nn.Module, config: TransformerConfig) -> None:
    """On the last pipeline stage, the language-model output layer makes way for the head."""
    if model.post_process:
        model.output_layer = ValueHead(config).to(next(model.parameters()).device)


def language_model_weights_for(state: Dict[str, Any], saved_args: argparse.Namespace,
                               args: argparse.Namespace, module: torch.nn.Module
                               ) -> Dict[str, Any]:
    """A reward-model run started from a language model's checkpoint (pretrained or SFT)
    keeps its freshly initialised head in place of the vocabulary output layer."""
    if not is_reward_model(args) or is_reward_model(saved_args):
        return state
    state = {k: v for k, v in state.items() if not k.startswith("output_layer.")}
    own = module.state_dict()
    if OUTPUT in own:
        state[OUTPUT] = own[OUTPUT]
    return state

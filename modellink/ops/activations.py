"""The MLP activation the flags select: SwiGLU (`--swiglu`), GeGLU (`--geglu`, exact GELU gate;
`--gelu-tanh`, tanh-approximated gate, as ModelLink's Gemma scripts), the tanh-approximated
GELU without a gate (`--openai-gelu`, Megatron-LM's name; Bloom), or plain GELU.

megatron-core's MLP and MoE experts apply `TransformerConfig.activation_func`, gated by
`gated_linear_unit`; `activation_from_args()` gives both, and `mlp_activation()` the whole
function of linear_fc1's output for the MLPs that apply it themselves (activation recompute).
"""
from __future__ import annotations

import argparse
from typing import Callable, Tuple

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # transformers' "gelu_pytorch_tanh" (Gemma) and, up to its rounded constant, Bloom's gelu.
    return F.gelu(x, approximate="tanh")


def gated_mlp(args: argparse.Namespace) -> bool:
    """Whether linear_fc1 holds [gate; up] halves (also read from old checkpoints' args)."""
    return any(getattr(args, flag, False) for flag in ("swiglu", "geglu", "gelu_tanh"))


def activation_from_args(args: argparse.Namespace) -> Tuple[Activation, bool]:
    """(activation_func, gated_linear_unit) for TransformerConfig."""
    if args.swiglu:
        return F.silu, True
    if args.gelu_tanh:  # wins over --geglu, as in ModelLink
        return gelu_tanh, True
    if args.geglu:
        return F.gelu, True
    return (gelu_tanh if args.openai_gelu else F.gelu), False


def glu(activation: Activation) -> Activation:
    def gated(x: torch.Tensor) -> torch.Tensor:
        gate, up = torch.chunk(x, 2, dim=-1)
        return activation(gate) * up
    return gated


def mlp_activation(args: argparse.Namespace) -> Activation:
    """The function of linear_fc1's output (both halves when gated) that feeds linear_fc2."""
    activation, gated = activation_from_args(args)
    return glu(activation) if gated else activation

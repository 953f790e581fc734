"""Mixture-of-experts flags -> megatron-core's MoE configuration and expert module.

megatron-core already routes, drops, pads and runs shared experts; this module only maps
ModelLink's flags onto its TransformerConfig fields, and picks the expert MLP: GroupedMLP
needs the CUDA `grouped_gemm` package, so without it `--moe-grouped-gemm` runs the same
experts one after another (SequentialMLP), which computes the same function.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict

from megatron.core.transformer.moe.grouped_gemm_util import grouped_gemm_is_available


def use_grouped_gemm(args: argparse.Namespace) -> bool:
    """Whether the experts run as megatron-core's GroupedMLP (`--moe-grouped-gemm` and the
    `grouped_gemm` package importable)."""
    return bool(args.moe_grouped_gemm) and grouped_gemm_is_available()


def expert_path(args: argparse.Namespace) -> str:
    """The start-up log's name of the expert implementation."""
    if use_grouped_gemm(args):
        return "GroupedMLP (grouped_gemm)"
    if args.moe_grouped_gemm:
        return "SequentialMLP (--moe-grouped-gemm asked, grouped_gemm package absent)"
    return "SequentialMLP"


def moe_config_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """TransformerConfig fields of the MoE flags (empty for a dense model)."""
    if args.num_experts is None:
        return {}
    # ModelLink's softmax_topk: top-k of the softmax over all experts, no balancing loss.
    softmax_topk = args.moe_router_load_balancing_type == "softmax_topk"
    return dict(
        num_moe_experts=args.num_experts,
        moe_ffn_hidden_size=args.moe_ffn_hidden_size,
        moe_router_topk=args.moe_router_topk,
        moe_router_load_balancing_type="none" if softmax_topk else
        args.moe_router_load_balancing_type,
        moe_router_pre_softmax=softmax_topk,
        moe_aux_loss_coeff=args.moe_aux_loss_coeff,
        moe_z_loss_coeff=args.moe_z_loss_coeff,
        moe_token_dispatcher_type=args.moe_token_dispatcher_type,
        moe_grouped_gemm=use_grouped_gemm(args),
        moe_expert_capacity_factor=args.moe_expert_capacity_factor,
        moe_pad_expert_input_to_capacity=args.moe_pad_expert_input_to_capacity,
        moe_token_drop_policy=args.moe_token_drop_policy,
        moe_shared_expert_intermediate_size=args.moe_shared_expert_intermediate_size,
        moe_shared_expert_gate=args.shared_expert_gate,
    )

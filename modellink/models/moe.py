"""Mixture-of-experts flags -> megatron-core's MoE configuration and expert module.

megatron-core already routes, drops, pads and runs shared experts; this module only declares
and checks the MoE flags (DeepSeek's too: shared experts counted in experts, dense first layers,
per-sequence and device balance losses, the last in balance_losses.py), maps them onto its
TransformerConfig fields, and picks the expert MLP: GroupedMLP
needs the CUDA `grouped_gemm` package, so without it `--moe-grouped-gemm` runs the same
experts one after another (SequentialMLP), which computes the same function.
"""
from __future__ import annotations

import argparse
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

from megatron.core.transformer.moe.grouped_gemm_util import grouped_gemm_is_available

from modellink.argument_errors import require
from modellink.models.balance_losses import DeviceBalancedRouter
from modellink.models.group_routing import GroupLimitedRouter


def add_moe_arguments(parser: argparse.ArgumentParser) -> None:
    """The mixture-of-experts flags (Megatron-LM's and ModelLink's)."""
    g = parser.add_argument_group("mixture of experts")
    g.add_argument("--num-experts", type=int, default=None)
    g.add_argument("--moe-ffn-hidden-size", "--moe-intermediate-size", type=int, default=None,
                   help="each routed expert's hidden width (--moe-intermediate-size is "
                        "ModelLink's DeepSeek spelling)")
    g.add_argument("--moe-router-topk", type=int, default=2)
    g.add_argument("--moe-router-pre-softmax", action="store_true",
                   help="top-k of the softmax over all experts, weights not renormalised "
                        "(Qwen2-MoE); without it, the softmax over the top-k logits")
    g.add_argument("--moe-router-load-balancing-type", default="aux_loss",
                   choices=["aux_loss", "seq_aux_loss", "sinkhorn", "softmax_topk",
                            "group_limited_greedy", "none"])
    g.add_argument("--moe-aux-loss-coeff", type=float, default=0.0)
    g.add_argument("--moe-z-loss-coeff", type=float, default=None)
    g.add_argument("--moe-token-dispatcher-type", default="allgather",
                   choices=["allgather", "alltoall"])
    g.add_argument("--moe-grouped-gemm", action="store_true")
    g.add_argument("--moe-expert-capacity-factor", type=float, default=None,
                   help="tokens an expert takes, as a multiple of an even share; the rest drop")
    g.add_argument("--moe-pad-expert-input-to-capacity", action="store_true")
    g.add_argument("--moe-token-drop-policy", default="probs", choices=["probs", "position"])
    g.add_argument("--moe-shared-expert-intermediate-size", type=int, default=None)
    g.add_argument("--shared-expert-gate", action="store_true",
                   help="sigmoid gate on the shared experts' output (Qwen2-MoE)")
    g.add_argument("--moe-permutation-async-comm", action="store_true")
    g.add_argument("--topk-group", type=int, default=None,
                   help="group_limited_greedy: the expert groups each token picks its experts "
                        "from (groups ranked by their best expert, as DeepSeek-V2)")
    g.add_argument("--n-group", type=int, default=None,
                   help="group_limited_greedy: the expert groups (DeepSeek-V2's n_group; "
                        "default: one per expert-parallel rank, as ModelLink groups them)")
    g.add_argument("--routed-scaling-factor", type=float, default=None,
                   help="scale of the chosen experts' weights (group_limited_greedy needs it)")
    g.add_argument("--norm-topk-prob", action="store_true",
                   help="the chosen experts' weights renormalised to sum to 1 (with "
                        "softmax_topk or group_limited_greedy, whose weights are otherwise "
                        "the softmax over all experts)")
    g.add_argument("--seq-aux", action="store_true",
                   help="the auxiliary balancing loss per sequence, not per batch")
    g.add_argument("--moe-device-level-aux-loss-coeff", type=float, default=0.0,
                   help="weight of DeepSeek-V2's device-level balance loss (the experts' "
                        "groups are the expert-parallel ranks)")
    g.add_argument("--moe-comm-aux-loss-coeff", type=float, default=0.0,
                   help="weight of DeepSeek-V2's communication balance loss (tokens sent to "
                        "each expert-parallel rank)")
    g.add_argument("--n-shared-experts", type=int, default=None,
                   help="shared experts every token passes through, as one MLP of N x "
                        "--moe-intermediate-size (DeepSeek MoE)")
    g.add_argument("--first-k-dense-replace", type=int, default=0,
                   help="the first K layers have a dense MLP of --ffn-hidden-size (DeepSeek)")
    g.add_argument("--moe-layer-freq", type=int, default=1,
                   help="MoE in layers i (from 0) with i %% N == 0, past --first-k-dense-replace")


def validate_moe_args(args: argparse.Namespace) -> None:
    """One-line errors for MoE flags that megatron-core would refuse late or misread."""
    _validate_group_limited(args)
    _validate_deepseek(args)
    capacity = args.moe_expert_capacity_factor
    require(args.num_experts is not None or (
        capacity is None and not args.moe_pad_expert_input_to_capacity
        and args.moe_shared_expert_intermediate_size is None and not args.shared_expert_gate
        and not args.moe_router_pre_softmax),
        "the MoE flags (--moe-expert-capacity-factor, --moe-shared-expert-intermediate-size, "
        "...) need --num-experts")
    require(capacity is None or capacity > 0,
            f"--moe-expert-capacity-factor {capacity} must be > 0")
    require(capacity is None or args.moe_router_load_balancing_type != "sinkhorn",
            "--moe-expert-capacity-factor does not work with "
            "--moe-router-load-balancing-type sinkhorn")
    require(not args.moe_pad_expert_input_to_capacity or capacity is not None,
            "--moe-pad-expert-input-to-capacity needs --moe-expert-capacity-factor")
    shared = args.moe_shared_expert_intermediate_size
    require(shared is None or shared > 0,
            f"--moe-shared-expert-intermediate-size {shared} must be > 0")
    require(not args.shared_expert_gate or shared is not None,
            "--shared-expert-gate needs --moe-shared-expert-intermediate-size")


def _validate_deepseek(args: argparse.Namespace) -> None:
    """DeepSeek MoE's flags; --n-shared-experts becomes the shared experts' width."""
    moe = args.num_experts is not None
    for flag, given in (("--n-shared-experts", args.n_shared_experts is not None),
                        ("--first-k-dense-replace", args.first_k_dense_replace != 0),
                        ("--moe-layer-freq", args.moe_layer_freq != 1),
                        ("--norm-topk-prob", args.norm_topk_prob), ("--seq-aux", args.seq_aux),
                        ("--moe-device-level-aux-loss-coeff",
                         args.moe_device_level_aux_loss_coeff != 0),
                        ("--moe-comm-aux-loss-coeff", args.moe_comm_aux_loss_coeff != 0)):
        require(moe or not given, f"{flag} needs --num-experts")
    for flag, coeff in (
            ("--moe-device-level-aux-loss-coeff", args.moe_device_level_aux_loss_coeff),
            ("--moe-comm-aux-loss-coeff", args.moe_comm_aux_loss_coeff)):
        require(coeff >= 0, f"{flag} must be >= 0, got {coeff}")
    require(args.first_k_dense_replace >= 0,
            f"--first-k-dense-replace must be >= 0, got {args.first_k_dense_replace}")
    require(args.moe_layer_freq >= 1, f"--moe-layer-freq must be >= 1, got {args.moe_layer_freq}")
    require(not moe or any(moe_layer_pattern(args)),
            f"--first-k-dense-replace {args.first_k_dense_replace} with --moe-layer-freq "
            f"{args.moe_layer_freq} leaves no MoE layer in --num-layers {args.num_layers}")
    require(not (args.norm_topk_prob and args.moe_router_pre_softmax),
            "--norm-topk-prob renormalises what --moe-router-pre-softmax leaves unnormalised; "
            "give one of them")
    require(not args.seq_aux or args.moe_router_load_balancing_type in (
        "aux_loss", "group_limited_greedy"),
        f"--seq-aux needs the aux_loss balancing (--moe-router-load-balancing-type aux_loss or "
        f"group_limited_greedy), got {args.moe_router_load_balancing_type}")
    shared = args.n_shared_experts
    if shared is not None:
        require(shared >= 1, f"--n-shared-experts must be >= 1, got {shared}")
        width = shared * args.moe_ffn_hidden_size
        given = args.moe_shared_expert_intermediate_size
        require(given in (None, width),
                f"--n-shared-experts {shared} x --moe-intermediate-size "
                f"{args.moe_ffn_hidden_size} = {width} disagrees with "
                f"--moe-shared-expert-intermediate-size {given}")
        args.moe_shared_expert_intermediate_size = width


def moe_layer_pattern(args: argparse.Namespace) -> List[int]:
    """Per layer, 1 for MoE and 0 for a dense MLP."""
    dense = set(dense_layers(args.num_layers, args.first_k_dense_replace, args.moe_layer_freq))
    return [int(i not in dense) for i in range(args.num_layers)]


def dense_layers(num_layers: int, first_k_dense: int, freq: int) -> Tuple[int, ...]:
    """The layers of an MoE model with a dense MLP: as DeepSeek, layer i (from 0) is MoE when
    i >= first_k_dense and i % freq == 0."""
    return tuple(i for i in range(num_layers) if i < first_k_dense or i % freq != 0)


def _validate_group_limited(args: argparse.Namespace) -> None:
    if args.moe_router_load_balancing_type != "group_limited_greedy":
        # --routed-scaling-factor also scales greedy routing's weights (DeepSeek's config).
        for flag, value in (("--topk-group", args.topk_group), ("--n-group", args.n_group)):
            require(value is None, f"{flag}: its expert groups need "
                                   f"--moe-router-load-balancing-type group_limited_greedy")
        require(args.routed_scaling_factor is None or args.num_experts is not None,
                "--routed-scaling-factor needs --num-experts")
        return
    flag = "--moe-router-load-balancing-type group_limited_greedy"
    require(args.num_experts is not None, f"{flag} needs --num-experts")
    require(args.topk_group is not None, f"{flag} needs --topk-group")
    # ModelLink multiplies the chosen experts' weights by it and has no default for it.
    require(args.routed_scaling_factor is not None, f"{flag} needs --routed-scaling-factor")
    if args.n_group is None:  # ModelLink's groups: the expert-parallel ranks
        args.n_group = args.expert_model_parallel_size
    groups, picked, topk = args.n_group, args.topk_group, args.moe_router_topk
    require(groups >= 1 and args.num_experts % groups == 0,
            f"--n-group {groups} does not divide --num-experts {args.num_experts}")
    require(1 <= picked <= groups,
            f"--topk-group {picked} must be between 1 and --n-group {groups}")
    require(topk <= picked * args.num_experts // groups,
            f"--moe-router-topk {topk} exceeds the {picked * args.num_experts // groups} experts "
            f"of --topk-group {picked} groups")


def router_spec(args: argparse.Namespace) -> Optional[Any]:
    """The router MoELayer builds: with DeepSeek's device balance losses or group-limited
    routing, ours (None: megatron-core's own)."""
    if not (args.moe_device_level_aux_loss_coeff or args.moe_comm_aux_loss_coeff):
        return GroupLimitedRouter if args.topk_group is not None else None
    devices = args.expert_model_parallel_size
    per_token = args.topk_group if args.n_group == devices else min(args.moe_router_topk, devices)
    return partial(DeviceBalancedRouter, devices=devices, devices_per_token=per_token,
                   device_coeff=args.moe_device_level_aux_loss_coeff,
                   comm_coeff=args.moe_comm_aux_loss_coeff)


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
    balancing = args.moe_router_load_balancing_type
    # ModelLink's softmax_topk: top-k of the softmax over all experts, no balancing loss.
    softmax_topk = balancing == "softmax_topk"
    # ModelLink's group_limited_greedy: the top --topk-group of --n-group expert groups by their
    # best softmax score (GroupLimitedRouter), the top-k experts among them, weights = scores x
    # --routed-scaling-factor; its balancing loss is aux_loss (when --moe-aux-loss-coeff > 0).
    group_limited = balancing == "group_limited_greedy"
    return dict(
        num_moe_experts=args.num_experts,
        moe_ffn_hidden_size=args.moe_ffn_hidden_size,
        moe_router_topk=args.moe_router_topk,
        moe_router_load_balancing_type=("none" if softmax_topk else
                                        "seq_aux_loss" if args.seq_aux else
                                        "aux_loss" if group_limited else balancing),
        # Without pre-softmax megatron-core takes the softmax over the top-k logits alone,
        # which is the renormalised softmax over all experts.
        moe_router_pre_softmax=(args.moe_router_pre_softmax or softmax_topk or group_limited)
        and not args.norm_topk_prob,
        moe_layer_freq=moe_layer_pattern(args),
        moe_router_num_groups=args.n_group,
        moe_router_group_topk=args.topk_group,
        moe_router_topk_scaling_factor=args.routed_scaling_factor,
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

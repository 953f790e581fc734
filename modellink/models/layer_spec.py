"""Transformer layer specs: megatron-core's local layers with modellink's norms and operators.

`operator_choices()` turns the fused-operator flags and the device into the implementation of
each operator; the specs are built from it and `operator_paths()` reports it, so the start-up
log names exactly what runs.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayerSubmodules

from modellink.context_parallel_args import context_parallel_settings
from modellink.models.decoding_layer import DecodingTransformerLayer
from modellink.models.mla import mla_attention_spec
from modellink.models.moe import expert_path, router_spec, use_grouped_gemm
from modellink.models.residual import PostLayerNormResidualLayer, fp32_residual_bias_dropout_add
from modellink.models.sandwich_layer import SandwichLayerSubmodules, SandwichNormLayer
from modellink.ops.activations import mlp_activation
from modellink.ops.context_parallel import ContextParallelAttention, ContextParallelSettings
from modellink.ops.attention import (
    PATH_NAMES,
    AttentionSettings,
    FlashSelfAttention,
    attention_window,
    select_attention_path,
)
from modellink.ops.mc2 import MC2ColumnParallelLinear, MC2RowParallelLinear
from modellink.ops.mlp import ActivationMLP
from modellink.ops.norm import LayerNorm, RMSNorm, RMSNormImpl, select_rms_norm
from modellink.ops.rotary import RotaryImpl, select_rotary
from modellink.ops.rotary_attention import RotarySelfAttention
from modellink.ops.swiglu import SwiGLUImpl, select_swiglu


@dataclass(frozen=True)
class OperatorChoices:
    attention: Optional[AttentionSettings]  # None: megatron-core's DotProductAttention
    rmsnorm: RMSNormImpl
    swiglu: SwiGLUImpl
    rotary: Optional[RotaryImpl]  # None: megatron-core's own RoPE application
    fused_mc2: bool  # NPU MC2 kernels (elsewhere --use-mc2 keeps megatron-core's SP path)


def _resolved(device: str) -> str:
    if device not in ("npu", "cuda", "cpu"):
        raise ValueError(f"operators are chosen for a resolved device (npu, cuda or cpu), got "
                         f"{device!r}: build models after modellink.training.initialize()")
    return device


def window_from_args(args: argparse.Namespace) -> Optional[int]:
    """The attention window the flags ask for, over the longest sequence the model will see."""
    return attention_window(args.sliding_window, args.sparse_mode, args.pre_tockens,
                            max(args.seq_length, args.max_position_embeddings))


def operator_choices(args: argparse.Namespace, device: str) -> OperatorChoices:
    device = _resolved(device)
    attention = None
    alibi = args.position_embedding_type == "alibi"
    softcap = args.attn_logit_softcapping
    if args.use_flash_attn or window_from_args(args) is not None or alibi or softcap:
        attention = AttentionSettings(
            path=select_attention_path(device, args.use_flash_attn),
            sparse_mode=args.sparse_mode, pre_tokens=args.pre_tockens,
            next_tokens=args.next_tockens, shape_order=args.shape_order,
            softcap=softcap, alibi=alibi)
    rotary = select_rotary(device, True) if args.use_fused_rotary_pos_emb else None
    return OperatorChoices(
        attention=attention,
        rmsnorm=select_rms_norm(device, args.use_fused_rmsnorm),
        swiglu=select_swiglu(device, args.use_fused_swiglu),
        rotary=rotary,
        fused_mc2=args.use_mc2 and device == "npu",
    )


def norm_spec(args: argparse.Namespace) -> ModuleSpec:
    if args.normalization == "RMSNorm":
        impl = select_rms_norm(_resolved(args.device), args.use_fused_rmsnorm)
        return ModuleSpec(module=RMSNorm, params={"impl": impl})
    return ModuleSpec(module=LayerNorm)


class _ModelLinkSpecProvider(LocalSpecProvider):
    """megatron-core's local provider with our norms (they support sequence parallelism)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._norm = norm_spec(args)

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> ModuleSpec:
        return self._norm


def _mlp_spec(args: argparse.Namespace, ops: OperatorChoices, moe: bool) -> ModuleSpec:
    if moe:
        # MoE experts keep megatron-core's linears and activation path.
        spec = get_mlp_module_spec_for_backend(backend=_ModelLinkSpecProvider(args),
                                               num_experts=args.num_experts,
                                               moe_grouped_gemm=use_grouped_gemm(args))
        router = router_spec(args)
        if router is not None:
            spec = dataclasses.replace(
                spec, submodules=dataclasses.replace(spec.submodules, router=router))
        return spec
    submodules = MLPSubmodules(
        linear_fc1=MC2ColumnParallelLinear if ops.fused_mc2 else ColumnParallelLinear,
        linear_fc2=MC2RowParallelLinear if ops.fused_mc2 else RowParallelLinear)
    if not (args.use_fused_swiglu and args.swiglu) and not args.recompute_activation_function:
        return ModuleSpec(module=MLP, submodules=submodules)
    activation = ops.swiglu.fn if args.swiglu else mlp_activation(args)
    return ModuleSpec(module=ActivationMLP, submodules=submodules,
                      params={"activation": activation,
                              "recompute_activation": args.recompute_activation_function})


class _DenseBias:
    """--add-dense-bias: megatron-core gives the attention output projection a bias only with
    every other linear's (add_bias_linear); InternLM has it with bias-free MLPs."""

    def __init__(self, *args: Any, bias: bool, **kwargs: Any) -> None:
        super().__init__(*args, bias=True, **kwargs)


class DenseBiasRowParallelLinear(_DenseBias, RowParallelLinear):
    """The attention output projection with its bias under --add-dense-bias."""


class DenseBiasMC2RowParallelLinear(_DenseBias, MC2RowParallelLinear):
    """The same on NPU's MC2 kernels (--use-mc2)."""


def _self_attention_spec(ops: OperatorChoices, qk_norm: ModuleSpec,
                         cp: Optional[ContextParallelSettings], dense_bias: bool) -> ModuleSpec:
    if cp is not None:
        # megatron-core's DotProductAttention refuses CP > 1: our operators always serve it.
        core_attention = partial(ContextParallelAttention,
                                 settings=ops.attention or AttentionSettings(), cp=cp)
    elif ops.attention is None:
        core_attention = DotProductAttention
    else:
        core_attention = partial(FlashSelfAttention, settings=ops.attention)
    params = {"attn_mask_type": AttnMaskType.causal}
    if dense_bias:
        linear_proj = DenseBiasMC2RowParallelLinear if ops.fused_mc2 else DenseBiasRowParallelLinear
    else:
        linear_proj = MC2RowParallelLinear if ops.fused_mc2 else RowParallelLinear
    module = SelfAttention
    if ops.rotary is not None:
        module, params["rotary"] = RotarySelfAttention, ops.rotary
    return ModuleSpec(
        module=module,
        params=params,
        submodules=SelfAttentionSubmodules(
            linear_qkv=MC2ColumnParallelLinear if ops.fused_mc2 else ColumnParallelLinear,
            core_attention=core_attention,
            linear_proj=linear_proj,
            q_layernorm=qk_norm,
            k_layernorm=qk_norm,
        ),
    )


def decoder_layer_spec(args: argparse.Namespace, moe: Optional[bool] = None) -> ModuleSpec:
    """One decoder layer for `args.device` (the backend initialize() resolved); `moe` False
    gives an MoE model's dense layer (default: MoE whenever --num-experts is set)."""
    ops = operator_choices(args, args.device)
    norm = norm_spec(args)
    bda = fp32_residual_bias_dropout_add if args.fp32_residual_connection else get_bias_dropout_add
    if args.multi_head_latent_attention:
        attention = mla_attention_spec(ops.attention, norm, args.qk_layernorm)
    else:
        attention = _self_attention_spec(ops, norm if args.qk_layernorm else IdentityOp,
                                         context_parallel_settings(args), args.add_dense_bias)
    submodules = dict(
        input_layernorm=norm,
        self_attention=attention,
        self_attn_bda=bda,
        pre_mlp_layernorm=norm,
        mlp=_mlp_spec(args, ops, args.num_experts is not None if moe is None else moe),
        mlp_bda=bda,
    )
    if args.post_norm:
        return ModuleSpec(module=SandwichNormLayer, submodules=SandwichLayerSubmodules(
            **submodules, post_attn_norm=norm, post_mlp_layernorm=norm))
    layer = (PostLayerNormResidualLayer if args.apply_residual_connection_post_layernorm
             else DecodingTransformerLayer)
    return ModuleSpec(module=layer, submodules=TransformerLayerSubmodules(**submodules))


def _swiglu_path(args: argparse.Namespace, ops: OperatorChoices, device: str) -> str:
    if not args.swiglu:
        return "n/a"
    if args.num_experts is None:
        return ops.swiglu.name
    fused = args.use_fused_swiglu and device == "cuda"
    return f"MoE experts: megatron-core {'fused bias-swiglu' if fused else 'reference'}"


def _cp_path(cp: ContextParallelSettings) -> str:
    ring = "ring attention" + (" (send/recv overlapped)" if cp.send_recv_overlap else "")
    if cp.algo == "ulysses_cp_algo":
        return "Ulysses all-to-all"
    if cp.algo == "megatron_cp_algo":
        return ring
    return f"hybrid, Ulysses groups of {cp.ulysses_degree} + {ring} across them"


def operator_paths(args: argparse.Namespace, device: str) -> str:
    """One line naming the implementation each fused-operator flag selected on this device."""
    ops = operator_choices(args, device)
    cp = context_parallel_settings(args)
    if ops.attention is None and cp is None:
        attention = "megatron-core math"
    elif ops.attention is None:
        attention = PATH_NAMES["reference"]
    else:
        window = window_from_args(args)
        attention = PATH_NAMES[ops.attention.path] + (
            f" (sliding window {window})" if window is not None else "")
        if ops.attention.path == "npu":
            attention += f" [{args.shape_order}, sparse mode {args.sparse_mode}]"
        if ops.attention.alibi:
            attention += ", alibi"
        if ops.attention.softcap is not None:
            attention += f", logit soft-cap {ops.attention.softcap}"
    if args.multi_head_latent_attention:
        path = ops.attention.path if ops.attention is not None else "sdpa"
        attention = f"multi-head latent attention (megatron-core) on {PATH_NAMES[path]}" + (
            ", values zero-padded to the key width" if path in ("npu", "flash-attn") else "")
    if args.position_embedding_type != "rope":
        rotary = "n/a"
    else:
        rotary = ops.rotary.name if ops.rotary is not None else "reference (megatron-core)"
        if args.rope_scaling_type is not None:
            rotary += f", {args.rope_scaling_type} scaling x{args.rope_scaling_factor}"
    if not args.use_mc2:
        mc2 = "off"
    elif ops.fused_mc2:
        mc2 = "npu_all_gather_base_mm / npu_mm_reduce_scatter_base"
    else:
        mc2 = "megatron-core sequence-parallel all-gather/reduce-scatter + matmul (no MC2 kernels)"
    recompute = args.recompute_granularity or "off"
    if args.recompute_granularity == "full":
        recompute += f" ({args.recompute_method}, {args.recompute_num_layers} layers)"
    elif args.recompute_granularity == "selective":
        recompute += f" ({', '.join(args.recompute_modules or ['core_attn'])})"
    if args.recompute_activation_function:
        recompute += ", activation function"
    rmsnorm = ops.rmsnorm.name if args.normalization == "RMSNorm" else "n/a"
    if cp is not None:
        attention += f", context parallel {args.context_parallel_size}: {_cp_path(cp)}"
    return (f"attention: {attention}, rmsnorm: {rmsnorm}, "
            f"swiglu: {_swiglu_path(args, ops, device)}, rotary: {rotary}, mc2: {mc2}, "
            f"recompute: {recompute}"
            + (f", MoE experts: {expert_path(args)}" if args.num_experts is not None else ""))

"""Transformer layer specs: megatron-core's local layers with modellink's norms and operators."""
from __future__ import annotations

import argparse

from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
)

from modellink.ops.attention import FlashSelfAttention
from modellink.ops.norm import LayerNorm, RMSNorm


def norm_spec(args: argparse.Namespace) -> ModuleSpec:
    if args.normalization == "RMSNorm":
        return ModuleSpec(module=RMSNorm, params={"use_fused": args.use_fused_rmsnorm})
    return ModuleSpec(module=LayerNorm)


class _ModelLinkSpecProvider(LocalSpecProvider):
    """megatron-core's local provider with our norms (they support sequence parallelism)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._norm = norm_spec(args)

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> ModuleSpec:
        return self._norm


def decoder_layer_spec(args: argparse.Namespace) -> ModuleSpec:
    provider = _ModelLinkSpecProvider(args)
    norm = norm_spec(args)
    core_attention = FlashSelfAttention if args.use_flash_attn else DotProductAttention
    mlp = get_mlp_module_spec_for_backend(
        backend=provider, num_experts=args.num_experts, moe_grouped_gemm=args.moe_grouped_gemm
    )
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=provider.column_parallel_linear(),
                    core_attention=core_attention,
                    linear_proj=provider.row_parallel_linear(),
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
        ),
    )


def operator_paths(args: argparse.Namespace, device: str) -> str:
    """One line naming the implementation each fused-operator flag selected on this device."""
    rmsnorm = ("npu_rms_norm" if device == "npu" else "torch rms_norm") \
        if args.use_fused_rmsnorm else "reference"
    swiglu = "megatron fused bias-swiglu" if args.use_fused_swiglu and device == "cuda" \
        else "reference"
    return (f"attention: {'torch SDPA' if args.use_flash_attn else 'megatron math'}, "
            f"rmsnorm: {rmsnorm if args.normalization == 'RMSNorm' else 'n/a'}, "
            f"swiglu: {swiglu if args.swiglu else 'n/a'}, "
            f"rotary: {'reference' if args.position_embedding_type == 'rope' else 'n/a'}")

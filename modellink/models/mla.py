"""Multi-head latent attention (DeepSeek-V2): ModelLink's flags -> megatron-core's MLASelfAttention.

megatron-core computes MLA (low-rank query and key/value projections, a shared RoPE key, YaRN
scaling of cos/sin and of the softmax scale); this module declares and checks the flags, maps
them onto MLATransformerConfig's fields and builds the attention spec from our linears, norms
and attention kernels. The value heads are narrower than the query/key heads, which the fused
kernels (npu_fusion_attention, flash-attn) do not take: values are zero-padded to the key width
for them and the padding is cut from the output.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.multi_latent_attention import (
    MLASelfAttention,
    MLASelfAttentionSubmodules,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.argument_errors import require
from modellink.ops.attention import AttentionSettings, FlashSelfAttention

# Flags that take a size, as args attributes; all of them are needed with the switch.
_SIZES = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def add_mla_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("multi-head latent attention (DeepSeek-V2)")
    g.add_argument("--multi-head-latent-attention", action="store_true",
                   help="megatron-core's MLA: low-rank query/key/value projections, one RoPE "
                        "key shared by the heads")
    g.add_argument("--q-lora-rank", type=int, default=None,
                   help="rank of the query's down projection (unset: queries projected "
                        "directly, as DeepSeek-V2-Lite)")
    g.add_argument("--kv-lora-rank", type=int, default=None,
                   help="rank of the compressed key/value latent")
    g.add_argument("--qk-rope-head-dim", type=int, default=None,
                   help="query/key channels per head that RoPE rotates")
    g.add_argument("--qk-nope-head-dim", type=int, default=None,
                   help="query/key channels per head without RoPE")
    g.add_argument("--v-head-dim", type=int, default=None, help="value channels per head")


def validate_mla_args(args: argparse.Namespace) -> None:
    """Runs after the fused-operator checks (it reads the resolved RoPE scaling)."""
    given = [f"--{name.replace('_', '-')}" for name in ("q_lora_rank",) + _SIZES
             if getattr(args, name) is not None]
    if not args.multi_head_latent_attention:
        require(not given, f"{', '.join(given)} need --multi-head-latent-attention")
        return
    for name in _SIZES:
        value = getattr(args, name)
        flag = f"--{name.replace('_', '-')}"
        require(value is not None, f"--multi-head-latent-attention needs {flag}")
        require(value > 0, f"{flag} must be > 0, got {value}")
    require(args.q_lora_rank is None or args.q_lora_rank > 0,
            f"--q-lora-rank must be > 0, got {args.q_lora_rank}")
    require(args.qk_rope_head_dim % 2 == 0,
            f"--qk-rope-head-dim {args.qk_rope_head_dim} must be even (RoPE rotates pairs)")
    require(args.position_embedding_type == "rope",
            "--multi-head-latent-attention needs --position-embedding-type rope")
    require(args.rope_scaling_type in (None, "yarn"),
            f"--multi-head-latent-attention supports --rope-scaling-type yarn only, got "
            f"{args.rope_scaling_type}")
    # MLA rotates its own RoPE channels (adjacent pairs, as DeepSeek-V2) inside megatron-core.
    for flag, on in (("--rotary-interleaved", args.rotary_interleaved),
                     ("--use-fused-rotary-pos-emb", args.use_fused_rotary_pos_emb),
                     ("--group-query-attention", args.group_query_attention),
                     ("--context-parallel-size > 1", args.context_parallel_size > 1),
                     ("--sliding-window", args.sliding_window is not None),
                     ("--attn-logit-softcapping", args.attn_logit_softcapping is not None),
                     ("--query-pre-attn-scalar", args.query_pre_attn_scalar is not None),
                     ("--rotary-percent < 1", args.rotary_percent != 1.0)):
        require(not on, f"--multi-head-latent-attention cannot be combined with {flag}")
    tp = args.tensor_model_parallel_size
    # The down projections are column-parallel linears whose outputs are gathered again.
    for name, rows in (("--kv-lora-rank + --qk-rope-head-dim",
                        args.kv_lora_rank + args.qk_rope_head_dim),
                       ("--q-lora-rank", args.q_lora_rank or tp)):
        require(rows % tp == 0,
                f"{name} ({rows}) is not divisible by --tensor-model-parallel-size {tp}")


def mla_config_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """MLATransformerConfig's own fields (empty without --multi-head-latent-attention)."""
    if not args.multi_head_latent_attention:
        return {}
    kwargs: Dict[str, Any] = dict(
        q_lora_rank=args.q_lora_rank, kv_lora_rank=args.kv_lora_rank,
        qk_head_dim=args.qk_nope_head_dim, qk_pos_emb_head_dim=args.qk_rope_head_dim,
        v_head_dim=args.v_head_dim, rotary_base=args.rotary_base, rope_type="rope",
        rotary_scaling_factor=1.0, mscale=1.0, mscale_all_dim=0.0)
    if args.rope_scaling_type == "yarn":
        kwargs.update(
            rope_type="yarn", rotary_scaling_factor=args.rope_scaling_factor,
            original_max_position_embeddings=int(args.original_max_position_embeddings),
            beta_fast=args.rope_scaling_beta_fast, beta_slow=args.rope_scaling_beta_slow,
            mscale=args.rope_scaling_mscale, mscale_all_dim=args.rope_scaling_mscale_all_dim)
    return kwargs


class LatentAttentionKernel(FlashSelfAttention):
    """Our attention kernels for MLA's query/key heads (nope + rope channels) and narrower
    value heads; megatron-core passes both widths, the tensors carry them."""

    def __init__(self, config: TransformerConfig, layer_number: int,
                 attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection: object = None, k_channels: Optional[int] = None,
                 v_channels: Optional[int] = None,
                 settings: AttentionSettings = AttentionSettings()) -> None:
        super().__init__(config, layer_number, attn_mask_type, attention_type,
                         attention_dropout, softmax_scale, cp_comm_type, pg_collection, settings)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], *args: Any, **kwargs: Any
                ) -> torch.Tensor:
        k_dim, v_dim = key.shape[-1], value.shape[-1]
        if v_dim == k_dim or self.settings.path == "sdpa":
            return super().forward(query, key, value, attention_mask, *args, **kwargs)
        padded = torch.nn.functional.pad(value, (0, k_dim - v_dim))
        out = super().forward(query, key, padded, attention_mask, *args, **kwargs)
        sq, b = out.shape[0], out.shape[1]
        return out.view(sq, b, -1, k_dim)[..., :v_dim].reshape(sq, b, -1)


def mla_attention_spec(settings: Optional[AttentionSettings], norm: ModuleSpec,
                       qk_layernorm: bool) -> ModuleSpec:
    """`settings` None: no fused kernel asked for; torch SDPA then computes the reference
    math (the plain path assumes equal key and value widths)."""
    kernel = settings if settings is not None else AttentionSettings(path="sdpa")
    latent_norm = norm if qk_layernorm else IdentityOp
    return ModuleSpec(
        module=MLASelfAttention,
        params={"attn_mask_type": AttnMaskType.causal},
        submodules=MLASelfAttentionSubmodules(
            linear_q_proj=ColumnParallelLinear,
            linear_q_down_proj=ColumnParallelLinear,
            linear_q_up_proj=ColumnParallelLinear,
            linear_kv_down_proj=ColumnParallelLinear,
            linear_kv_up_proj=ColumnParallelLinear,
            core_attention=ModuleSpec(module=LatentAttentionKernel,
                                      params={"settings": kernel}),
            linear_proj=RowParallelLinear,
            q_layernorm=latent_norm,
            kv_layernorm=latent_norm,
        ),
    )

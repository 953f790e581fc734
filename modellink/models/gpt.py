"""GPT-family models: megatron-core GPTModel composed from modellink layer specs."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import List, Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import layers as tensor_parallel_layers
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from modellink.models.gpt_model import ModelLinkGPTModel
from modellink.models.layer_spec import decoder_layer_spec, norm_spec, window_from_args
from modellink.models.lora import with_adapters
from modellink.models.mla import mla_config_kwargs
from modellink.models.moe import moe_config_kwargs, moe_layer_pattern
from modellink.models.value_head import attach_value_head, is_reward_model
from modellink.ops.activations import activation_from_args
from modellink.ops.rope_scaling import RopeScaling, scaled_inv_freq


@dataclass
class YarnTransformerConfig(TransformerConfig):
    """TransformerConfig plus the YaRN fields megatron-core's attention looks up by name (as
    MLATransformerConfig defines them) to scale cos/sin; used only with --rope-scaling-type yarn."""
    yarn_rotary_scaling_factor: float = 1.0
    yarn_mscale: Optional[float] = None
    yarn_mscale_all_dim: Optional[float] = None


def rope_scaling_from_args(args: argparse.Namespace) -> Optional[RopeScaling]:
    if args.rope_scaling_type is None:
        return None
    return RopeScaling(
        kind=args.rope_scaling_type, factor=args.rope_scaling_factor,
        original_max_positions=int(args.original_max_position_embeddings),
        low_freq_factor=args.low_freq_factor, high_freq_factor=args.high_freq_factor,
        beta_fast=args.rope_scaling_beta_fast, beta_slow=args.rope_scaling_beta_slow,
        mscale=args.rope_scaling_mscale, mscale_all_dim=args.rope_scaling_mscale_all_dim)


def transformer_config_from_args(args: argparse.Namespace, device: str) -> TransformerConfig:
    """Map the Megatron-LM command line onto megatron-core's TransformerConfig."""
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    window = window_from_args(args)
    activation, gated = activation_from_args(args)
    scalar = args.query_pre_attn_scalar
    kwargs = dict(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        kv_channels=args.kv_channels,
        num_query_groups=args.num_query_groups,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        layernorm_epsilon=args.norm_epsilon,
        normalization=args.normalization,
        layernorm_zero_centered_gamma=args.add_rmsnorm_offset,
        qk_layernorm=args.qk_layernorm,
        add_bias_linear=args.add_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        gated_linear_unit=gated,
        activation_func=activation,
        softmax_scale=scalar ** -0.5 if scalar is not None else None,
        init_method_std=args.init_method_std,
        apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        # Megatron's fused kernels need apex / Transformer Engine or torch.compile; the fused
        # operators we do have are selected through the layer spec instead.
        masked_softmax_fusion=False,
        bias_activation_fusion=args.use_fused_swiglu and args.swiglu and device == "cuda",
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        # As Megatron-LM: on unless turned off, where a fused path exists (apex's kernel, or
        # the CPU backend's addmm, patches/grad_accumulation.py).
        gradient_accumulation_fusion=(args.gradient_accumulation_fusion
                                      and tensor_parallel_layers._grad_accum_fusion_available),
        persist_layer_norm=False,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        context_parallel_size=args.context_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        params_dtype=dtype,
        # Pipeline stages pass the residual stream, fp32 with --fp32-residual-connection.
        pipeline_dtype=torch.float32 if args.fp32_residual_connection else dtype,
        fp32_residual_connection=args.fp32_residual_connection,
        apply_residual_connection_post_layernorm=args.apply_residual_connection_post_layernorm,
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu_initialization=args.use_cpu_initialization or device == "cpu",
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        recompute_modules=args.recompute_modules,
        window_size=(window, 0) if window is not None else None,
        window_attn_skip_freq=args.window_attn_skip_freq,
        rotary_interleaved=args.rotary_interleaved,
        deallocate_pipeline_outputs=True,
        # Batched p2p posts send_prev before send_next; with two stages both go to the same
        # peer, and gloo (unlike NCCL groups) matches messages by order alone, so activations
        # and gradients would swap. The unbatched path orders them per direction.
        batch_p2p_comm=device != "cpu",
        cross_entropy_loss_fusion=False,
    )
    if args.pipeline_layers is not None:
        kwargs["pipeline_model_parallel_layout"] = _layout_from_layer_list(args.pipeline_layers)
    kwargs.update(moe_config_kwargs(args))
    mla = mla_config_kwargs(args)
    if mla:
        # MLA applies its RoPE (and YaRN's scaling) itself, from these fields.
        return MLATransformerConfig(**kwargs, **mla)
    scaling = rope_scaling_from_args(args)
    if scaling is not None and scaling.kind == "yarn":
        # Hugging Face's attention factor: mscale / mscale_all_dim only when both are set.
        both = bool(scaling.mscale and scaling.mscale_all_dim)
        return YarnTransformerConfig(
            **kwargs, yarn_rotary_scaling_factor=scaling.factor,
            yarn_mscale=scaling.mscale if both else None,
            yarn_mscale_all_dim=scaling.mscale_all_dim if both else None)
    return TransformerConfig(**kwargs)


def _layout_from_layer_list(counts: List[int]) -> str:
    """`--num-layer-list 1,3` -> megatron-core layout "Et|tttL" (embedding first, loss last)."""
    stages = ["t" * n for n in counts]
    stages[0] = "E" + stages[0]
    stages[-1] = stages[-1] + "L"
    return "|".join(stages)


def build_model_chunks(args: argparse.Namespace, config: TransformerConfig) -> List[GPTModel]:
    """One GPTModel per virtual pipeline stage held by this rank (a single one without VPP)."""
    vpp = args.virtual_pipeline_model_parallel_size
    stages: List[Optional[int]] = list(range(vpp)) if vpp else [None]
    return [_build_chunk(args, config, vp_stage) for vp_stage in stages]


def _build_chunk(args: argparse.Namespace, config: TransformerConfig,
                 vp_stage: Optional[int]) -> GPTModel:
    local_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    if args.num_experts is None:
        layers = [with_adapters(decoder_layer_spec(args), args)] * local_layers
    else:
        # DeepSeek's dense first layers (--first-k-dense-replace, --moe-layer-freq).
        offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
        pattern = moe_layer_pattern(args)[offset:offset + local_layers]
        specs = {moe: with_adapters(decoder_layer_spec(args, bool(moe)), args)
                 for moe in set(pattern)}
        layers = [specs[moe] for moe in pattern]
    block = TransformerBlockSubmodules(layer_specs=layers, layer_norm=norm_spec(args))
    model = ModelLinkGPTModel(
        config=config,
        transformer_layer_spec=block,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        parallel_output=True,
        # A reward model has no vocabulary output layer to tie to the embedding.
        share_embeddings_and_output_weights=not (args.untie_embeddings_and_output_weights
                                                 or is_reward_model(args)),
        # ALiBi lives in the attention scores (modellink/ops/alibi.py), not in GPTModel.
        position_embedding_type=("none" if args.position_embedding_type == "alibi"
                                 else args.position_embedding_type),
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        vp_stage=vp_stage,
        scale_embeddings=args.input_embeds_norm,
        embedding_norm=norm_spec(args) if args.embed_layernorm else None,
        output_softcap=args.output_logit_softcapping,
        embedding_scale=args.scale_emb,
        logits_divisor=(None if args.dim_model_base is None
                        else args.hidden_size / args.dim_model_base),
        branch_scale=(None if args.scale_depth is None
                      else args.scale_depth / math.sqrt(args.num_layers)),
    )
    scaling = rope_scaling_from_args(args)
    if scaling is not None and not args.multi_head_latent_attention:
        # GPTModel builds plain RoPE; its frequencies are an attribute read on every forward
        # (cached per length), so replacing them before the first forward rescales every layer.
        rotary = model.rotary_pos_emb
        rotary.inv_freq = scaled_inv_freq(rotary.inv_freq.numel() * 2, args.rotary_base,
                                          scaling).to(rotary.inv_freq.device)
    if is_reward_model(args):
        attach_value_head(model, config)
    return model

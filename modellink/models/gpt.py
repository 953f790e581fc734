"""GPT-family models: megatron-core GPTModel composed from modellink layer specs."""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.models.layer_spec import decoder_layer_spec, norm_spec


def transformer_config_from_args(args: argparse.Namespace, device: str) -> TransformerConfig:
    """Map the Megatron-LM command line onto megatron-core's TransformerConfig."""
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
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
        add_bias_linear=args.add_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        init_method_std=args.init_method_std,
        apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        # Megatron's fused kernels need apex / Transformer Engine or torch.compile; the fused
        # operators we do have are selected through the layer spec instead.
        masked_softmax_fusion=False,
        bias_activation_fusion=args.use_fused_swiglu and args.swiglu and device == "cuda",
        bias_dropout_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        context_parallel_size=args.context_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu_initialization=args.use_cpu_initialization or device == "cpu",
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method,
        recompute_num_layers=args.recompute_num_layers,
        deallocate_pipeline_outputs=True,
        # Batched p2p posts send_prev before send_next; with two stages both go to the same
        # peer, and gloo (unlike NCCL groups) matches messages by order alone, so activations
        # and gradients would swap. The unbatched path orders them per direction.
        batch_p2p_comm=device != "cpu",
        cross_entropy_loss_fusion=False,
    )
    if args.pipeline_layers is not None:
        kwargs["pipeline_model_parallel_layout"] = _layout_from_layer_list(args.pipeline_layers)
    if args.num_experts is not None:
        kwargs.update(
            num_moe_experts=args.num_experts,
            moe_ffn_hidden_size=args.moe_ffn_hidden_size,
            moe_router_topk=args.moe_router_topk,
            moe_router_load_balancing_type=args.moe_router_load_balancing_type,
            moe_aux_loss_coeff=args.moe_aux_loss_coeff,
            moe_z_loss_coeff=args.moe_z_loss_coeff,
            moe_token_dispatcher_type=args.moe_token_dispatcher_type,
            moe_grouped_gemm=args.moe_grouped_gemm,
        )
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
    layer = decoder_layer_spec(args)
    local_layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    block = TransformerBlockSubmodules(layer_specs=[layer] * local_layers,
                                       layer_norm=norm_spec(args))
    return GPTModel(
        config=config,
        transformer_layer_spec=block,
        vocab_size=args.padded_vocab_size,
        max_sequence_length=args.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
        post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
        parallel_output=True,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
        position_embedding_type=args.position_embedding_type,
        rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base,
        vp_stage=vp_stage,
    )

"""DeepSeek-V2-Lite: multi-head latent attention (megatron-core's MLA, YaRN RoPE) and DeepSeek
MoE (routed experts plus shared ones, the first layers dense).

The converter covers the V2-Lite layout: queries projected directly (q_lora_rank null) and
greedy top-k routing. DeepSeek-V2 itself is refused on its config.json: its low-rank queries
would need a second weight layout, and its group-limited routing ranks groups by their best
expert, which megatron-core's group scores (sum of the best top-k / groups) differ from at
its top-6-of-3-groups setting.
"""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy
from modellink.models.families.base import (
    LLAMA_ARGS, LLAMA_FIELDS, LLAMA_FLAGS, Family, FamilySettings, Field, Layout, Size)
from modellink.models.families.common import LLAMA_REQUIRED, SWIGLU_MLP

_MLA_FIELDS = (Field("kv_lora_rank", "kv_lora_rank", "--kv-lora-rank"),
               Field("qk_rope_head_dim", "qk_rope_head_dim", "--qk-rope-head-dim"),
               Field("qk_nope_head_dim", "qk_nope_head_dim", "--qk-nope-head-dim"),
               Field("v_head_dim", "v_head_dim", "--v-head-dim"))
_MOE_FIELDS = (Field("n_routed_experts", "num_experts", "--num-experts"),
               Field("num_experts_per_tok", "moe_router_topk", "--moe-router-topk"),
               Field("moe_intermediate_size", "moe_ffn_hidden_size", "--moe-intermediate-size"),
               Field("n_shared_experts", "n_shared_experts", "--n-shared-experts"),
               Field("first_k_dense_replace", "first_k_dense_replace",
                     "--first-k-dense-replace"),
               Field("routed_scaling_factor", "routed_scaling_factor", "--routed-scaling-factor",
                     float))
# MLA: queries straight from the hidden state; the key/value latent and its norm; one RoPE
# key channel group shared by every head (the last qk_rope_head_dim rows of kv_a_proj).
_MLA = (
    Copy("input_layernorm.weight", "input_layernorm.weight"),
    Copy("self_attention.linear_q_proj.weight", "self_attn.q_proj.weight"),
    Copy("self_attention.linear_kv_down_proj.weight", "self_attn.kv_a_proj_with_mqa.weight"),
    Copy("self_attention.kv_layernorm.weight", "self_attn.kv_a_layernorm.weight"),
    Copy("self_attention.linear_kv_up_proj.weight", "self_attn.kv_b_proj.weight"),
    Copy("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    Copy("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
)

FAMILY = Family(
    settings=FamilySettings(
        "deepseek2", ("deepseek_v2",), "DeepseekV2ForCausalLM", "DeepseekV2Config",
        fields=LLAMA_FIELDS + _MLA_FIELDS,
        fixed_flags=LLAMA_FLAGS + ("--multi-head-latent-attention",),
        qk_layernorm=True, moe=True, moe_fields=_MOE_FIELDS,
        # The softmax over all experts, the top-k's weights not renormalised.
        moe_switches=("moe_router_pre_softmax",),
        rope_scalings=("yarn",),
        checked_args=dict(LLAMA_ARGS, multi_head_latent_attention=True, q_lora_rank=None,
                          moe_layer_freq=1),
        required={**LLAMA_REQUIRED, "q_lora_rank": None, "topk_method": "greedy",
                  "norm_topk_prob": False, "moe_layer_freq": 1}),
    mapping=WeightMapping(
        layer=_MLA + (
            Copy("mlp.router.weight", "mlp.gate.weight"),
            Concat("mlp.shared_experts.linear_fc1.weight",
                   ("mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight")),
            Copy("mlp.shared_experts.linear_fc2.weight", "mlp.shared_experts.down_proj.weight"),
        ),
        expert=(
            Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
                   ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
            Copy("mlp.experts.local_experts.{e}.linear_fc2.weight",
                 "mlp.experts.{e}.down_proj.weight"),
        ),
        dense_layer=_MLA + SWIGLU_MLP,
    ),
    template="deepseek2-lite",
    sizes={"lite": Size(27, 2048, 10944, 16, 102400, 163840, Layout(
        tp=1, pp=1, ep=8, micro_batch=1, global_batch=64, recompute="full"),
        head_dim=64, norm_eps=1e-6, experts=64, topk=6, moe_ffn=1408, extra={
            "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
            "v_head_dim": 128, "n_shared_experts": 2, "first_k_dense_replace": 1,
            "routed_scaling_factor": 1.0, "rope_parameters": {
                "rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
                "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
                "mscale": 0.707, "mscale_all_dim": 0.707}})},
    notes="DeepSeek-V2-Lite (and DeepSeek-Coder-V2-Lite); DeepSeek-V2 (236B) is not converted.")

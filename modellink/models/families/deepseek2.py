"""DeepSeek-V2 and V2-Lite: multi-head latent attention (megatron-core's MLA, YaRN RoPE) and
DeepSeek MoE (routed experts plus shared ones, the first layers dense).

V2-Lite projects queries directly (q_lora_rank null) and routes greedily. DeepSeek-V2 (236B,
the family's variant, told apart by its q_lora_rank) projects queries through a low-rank latent
with its own norm (HF q_a_proj, q_a_layernorm, q_b_proj = megatron-core's linear_q_down_proj,
q_layernorm, linear_q_up_proj) and routes group_limited_greedy: the top topk_group of n_group
expert groups ranked by their best expert (GroupLimitedRouter), the top-k experts among them.
Other combinations of the two (no published model has them) are refused on config.json.
transformers' DeepseekV2 ignores norm_topk_prob, so a config.json that sets it is refused.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy
from modellink.models.families.base import (
    LLAMA_ARGS, LLAMA_FIELDS, LLAMA_FLAGS, Family, FamilySettings, Field, Layout, Size, Variant)
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
# V2: queries through a low-rank latent and its norm instead of q_proj.
_MLA_LOW_RANK_Q = _MLA[:1] + (
    Copy("self_attention.linear_q_down_proj.weight", "self_attn.q_a_proj.weight"),
    Copy("self_attention.q_layernorm.weight", "self_attn.q_a_layernorm.weight"),
    Copy("self_attention.linear_q_up_proj.weight", "self_attn.q_b_proj.weight"),
) + _MLA[2:]
_MOE_LAYER = (
    Copy("mlp.router.weight", "mlp.gate.weight"),
    Concat("mlp.shared_experts.linear_fc1.weight",
           ("mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight")),
    Copy("mlp.shared_experts.linear_fc2.weight", "mlp.shared_experts.down_proj.weight"),
)
_EXPERT = (
    Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
           ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
    Copy("mlp.experts.local_experts.{e}.linear_fc2.weight", "mlp.experts.{e}.down_proj.weight"),
)
# transformers' DeepseekV2Config takes a config.json without q_lora_rank as V2's.
_HF_Q_LORA_RANK = 1536


def _is_v2(config: Dict[str, Any]) -> bool:
    return config.get("q_lora_rank", _HF_Q_LORA_RANK) is not None


_LITE = FamilySettings(
    "deepseek2", ("deepseek_v2",), "DeepseekV2ForCausalLM", "DeepseekV2Config",
    fields=LLAMA_FIELDS + _MLA_FIELDS,
    fixed_flags=LLAMA_FLAGS + ("--multi-head-latent-attention",),
    qk_layernorm=True, moe=True, moe_fields=_MOE_FIELDS,
    # The softmax over all experts, the top-k's weights not renormalised.
    moe_switches=("moe_router_pre_softmax",),
    rope_scalings=("yarn",),
    checked_args=dict(LLAMA_ARGS, multi_head_latent_attention=True, q_lora_rank=None,
                      moe_layer_freq=1, topk_group=None),
    required={**LLAMA_REQUIRED, "q_lora_rank": None, "topk_method": "greedy",
              "norm_topk_prob": False, "moe_layer_freq": 1})
_V2 = replace(
    _LITE, fields=_LITE.fields + (Field("q_lora_rank", "q_lora_rank", "--q-lora-rank"),),
    fixed_flags=_LITE.fixed_flags + ("--moe-router-load-balancing-type", "group_limited_greedy"),
    moe_fields=_MOE_FIELDS + (Field("n_group", "n_group", "--n-group"),
                              Field("topk_group", "topk_group", "--topk-group")),
    checked_args=dict(LLAMA_ARGS, multi_head_latent_attention=True, moe_layer_freq=1,
                      moe_router_load_balancing_type="group_limited_greedy"),
    required={key: value for key, value in _LITE.required.items() if key != "q_lora_rank"}
    | {"topk_method": "group_limited_greedy"},
    required_keys={key: "group_limited_greedy's expert groups" for key in ("n_group",
                                                                            "topk_group")})

# The published models' attention and RoPE (both sizes share them).
_MLA_SIZES = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
              "v_head_dim": 128}
_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0,
         "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1,
         "mscale": 0.707, "mscale_all_dim": 0.707}

FAMILY = Family(
    settings=replace(_LITE, variant=Variant(
        _V2, _is_v2, lambda args, _: getattr(args, "q_lora_rank", None) is not None,
        mapping=WeightMapping(layer=_MLA_LOW_RANK_Q + _MOE_LAYER, expert=_EXPERT,
                              dense_layer=_MLA_LOW_RANK_Q + SWIGLU_MLP))),
    mapping=WeightMapping(layer=_MLA + _MOE_LAYER, expert=_EXPERT, dense_layer=_MLA + SWIGLU_MLP),
    template="deepseek2-lite",
    sizes={
        "lite": Size(27, 2048, 10944, 16, 102400, 163840, Layout(
            tp=1, pp=1, ep=8, micro_batch=1, global_batch=64, recompute="full"),
            head_dim=64, norm_eps=1e-6, experts=64, topk=6, moe_ffn=1408, extra={
                **_MLA_SIZES, "n_shared_experts": 2, "first_k_dense_replace": 1,
                "routed_scaling_factor": 1.0, "rope_parameters": _YARN}),
        # 236B: bf16 weights alone are 472 GB, so no single 8 x 64 GB node holds it; see
        # docs/models.md for the planner's per-device peak of this layout.
        "236b": Size(60, 5120, 12288, 128, 102400, 163840, Layout(
            tp=1, pp=4, ep=32, micro_batch=1, global_batch=1024, recompute="full"),
            head_dim=64, norm_eps=1e-6, experts=160, topk=6, moe_ffn=1536, variant=True,
            template="deepseek2", extra={
                **_MLA_SIZES, "q_lora_rank": 1536, "n_shared_experts": 2,
                "first_k_dense_replace": 1, "routed_scaling_factor": 16.0, "n_group": 8,
                "topk_group": 3, "rope_parameters": _YARN}),
    },
    notes="DeepSeek-V2-Lite and DeepSeek-Coder-V2-Lite; DeepSeek-V2 and DeepSeek-Coder-V2 "
          "(236B: low-rank queries, group-limited routing).")

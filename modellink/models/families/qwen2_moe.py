"""Qwen1.5-MoE / Qwen2-MoE: every layer MoE, a softmax over all experts, the top-k's weights not
renormalised, and one shared expert whose output is scaled by sigmoid(shared_expert_gate . x)."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy
from modellink.models.families.base import (
    MIXTRAL_MOE, MOE_SWITCHES, Family, FamilySettings, Field, Layout, Size)
from modellink.models.families.common import ATTENTION, QKV_BIAS

_MOE_FIELDS = (
    Field("num_experts", "num_experts", "--num-experts"), MIXTRAL_MOE[1],
    Field("moe_intermediate_size", "moe_ffn_hidden_size", "--moe-ffn-hidden-size"),
    Field("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size",
          "--moe-shared-expert-intermediate-size"))

FAMILY = Family(
    settings=FamilySettings(
        "qwen2_moe", ("qwen2_moe",), "Qwen2MoeForCausalLM", "Qwen2MoeConfig", qkv_bias=True,
        moe=True, moe_fields=_MOE_FIELDS, moe_switches=MOE_SWITCHES, required={
            "hidden_act": "silu", "qkv_bias": True, "use_sliding_window": False,
            "norm_topk_prob": False, "decoder_sparse_step": 1, "mlp_only_layers": ([],)}),
    mapping=WeightMapping(
        layer=ATTENTION + QKV_BIAS + (
            Copy("mlp.router.weight", "mlp.gate.weight"),
            Concat("mlp.shared_experts.linear_fc1.weight",
                   ("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight")),
            Copy("mlp.shared_experts.linear_fc2.weight", "mlp.shared_expert.down_proj.weight"),
            Copy("mlp.shared_experts.gate_weight", "mlp.shared_expert_gate.weight"),
        ),
        expert=(
            Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
                   ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
            Copy("mlp.experts.local_experts.{e}.linear_fc2.weight",
                 "mlp.experts.{e}.down_proj.weight"),
        ),
    ),
    template="qwen",
    sizes={
        "a2.7b": Size(24, 2048, 5632, 16, 151936, 8192, Layout(
            tp=2, pp=1, ep=4, micro_batch=1, global_batch=64, recompute="full"),
            norm_eps=1e-6, rope_theta=1e6, experts=60, topk=4, moe_ffn=1408, shared_ffn=5632),
        "57b-a14b": Size(28, 3584, 18944, 28, 151936, 32768, Layout(
            tp=4, pp=4, ep=2, micro_batch=1, global_batch=64, recompute="full"),
            query_groups=4, norm_eps=1e-6, rope_theta=1e6, experts=64, topk=8, moe_ffn=2560,
            shared_ffn=20480),
    },
    notes="Qwen1.5-MoE-A2.7B and Qwen2-57B-A14B.")

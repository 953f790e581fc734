"""InternLM2: LLaMA's computation under its own tensor names, with q/k/v already fused in
megatron-core's layout (per KV group [q heads; k; v]); dynamic NTK scaling only changes RoPE
beyond max_position_embeddings."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy
from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size

_DIALECT = ConfigDialect(template={
    "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_act": "silu",
    "bias": False, "rope_scaling": None,
    "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                 "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    **dict.fromkeys(FILLED + ("num_key_value_heads", "rope_theta"))})

FAMILY = Family(
    settings=FamilySettings("internlm2", ("internlm2",), "InternLM2ForCausalLM", None,
                            required={"hidden_act": "silu", "bias": False},
                            rope_types=("default", "dynamic"), dialect=_DIALECT),
    mapping=WeightMapping(
        layer=(
            Copy("input_layernorm.weight", "attention_norm.weight"),
            Copy("self_attention.linear_qkv.weight", "attention.wqkv.weight"),
            Copy("self_attention.linear_proj.weight", "attention.wo.weight"),
            Copy("pre_mlp_layernorm.weight", "ffn_norm.weight"),
            Concat("mlp.linear_fc1.weight", ("feed_forward.w1.weight", "feed_forward.w3.weight")),
            Copy("mlp.linear_fc2.weight", "feed_forward.w2.weight"),
        ),
        embedding="model.tok_embeddings.weight", lm_head="output.weight"),
    template="intern2",
    sizes={
        "7b": Size(32, 4096, 14336, 32, 92544, 32768, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=64), query_groups=8, rope_theta=1e6),
        "20b": Size(48, 6144, 16384, 48, 92544, 32768, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=64, recompute="full"), query_groups=8,
            rope_theta=1e6),
    },
    notes="InternLM2 and InternLM2.5 (same layout).")

"""InternLM-1 (7B): LLaMA's layout with biased q/k/v and o projections, in a remote-code
checkpoint whose config.json has LLaMA's keys. RoPE's base sits in `rotary` (absent before the
dynamic NTK update), at 10000 in every published checkpoint and the only value accepted;
dynamic NTK only changes RoPE beyond max_position_embeddings."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION, QKV_BIAS, SWIGLU_MLP

ROTARY = (None, {"base": 10000, "type": "dynamic"}, {"base": 10000, "type": "origin"})
_DIALECT = ConfigDialect(template={
    "architectures": ["InternLMForCausalLM"], "model_type": "internlm", "hidden_act": "silu",
    "bias": True, "rotary": ROTARY[1],
    "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                 "AutoModel": "modeling_internlm.InternLMForCausalLM",
                 "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
    **dict.fromkeys(FILLED)})

FAMILY = Family(
    settings=FamilySettings("internlm", ("internlm",), "InternLMForCausalLM", None,
                            qkv_bias=True, dense_bias=True, dialect=_DIALECT,
                            required={"hidden_act": "silu", "bias": True, "rotary": ROTARY}),
    mapping=WeightMapping(
        layer=ATTENTION + QKV_BIAS
        + (Copy("self_attention.linear_proj.bias", "self_attn.o_proj.bias"),) + SWIGLU_MLP),
    template="intern",
    sizes={"7b": Size(32, 4096, 11008, 32, 103168, 2048, Layout(
        tp=8, pp=1, micro_batch=8, global_batch=128), norm_eps=1e-6)},
    notes="InternLM-7B.")

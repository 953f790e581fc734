"""GLM-4-0414 (`glm4`, Glm4ForCausalLM): GLM-4's model (glm.py) with a norm on the attention
and the MLP outputs too, before each residual add, which is --post-norm's sandwich. Its
post_attention_layernorm is the norm before the MLP, as in LLaMA; the added ones are
post_self_attn_layernorm and post_mlp_layernorm."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.config_dialects import ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.glm import LAYER, REQUIRED, TEMPLATE

FAMILY = Family(
    settings=FamilySettings(
        "glm4", ("glm4",), "Glm4ForCausalLM", "Glm4Config", qkv_bias=True, rotary_percent=0.5,
        rotary_interleaved=True, features=("post_norm",), required=REQUIRED,
        dialect=ConfigDialect(template={
            "architectures": ["Glm4ForCausalLM"], "model_type": "glm4", **TEMPLATE})),
    mapping=WeightMapping(layer=LAYER + (
        Copy("post_attn_norm.weight", "post_self_attn_layernorm.weight"),
        Copy("post_mlp_layernorm.weight", "post_mlp_layernorm.weight"))),
    template="glm4",
    sizes={"9b": Size(40, 4096, 13696, 32, 151552, 32768, Layout(
        tp=2, pp=2, micro_batch=1, global_batch=64), query_groups=2, head_dim=128)},
    notes="GLM-4-9B-0414 and its reasoning models (GLM-Z1-9B-0414).")

"""GLM-4 in transformers' own layout (`glm`, GlmForCausalLM: the -hf checkpoints of GLM-4-9B):
ChatGLM3's model (RoPE on the first half of each head's channels, adjacent pairs rotated, biased
q/k/v, SwiGLU with [gate; up] in one tensor) under LLaMA-style tensor names and config keys.

transformers 5 keeps partial_rotary_factor inside rope_parameters and older releases beside
it, so either place must hold 0.5. The config.json is written back from the one it came from
(a dialect with no renamed keys), which keeps rope_parameters as they were.
"""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION, QKV_BIAS

# ROPE, TEMPLATE, REQUIRED and LAYER are GLM-4-0414's too (glm4.py).
# rope_parameters as GLM-4-9B's config.json holds them under transformers 5 (None: written by
# an older release, which keeps partial_rotary_factor and rope_theta at the top level).
ROPE = (None, {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
TEMPLATE = {"hidden_act": "silu", "attention_bias": True, "head_dim": None,
            "num_key_value_heads": None, "rope_parameters": ROPE[1], **dict.fromkeys(FILLED)}
REQUIRED = {"hidden_act": "silu", "attention_bias": True, "partial_rotary_factor": 0.5,
            "rope_parameters": ROPE}
LAYER = ATTENTION + QKV_BIAS + (
    Copy("mlp.linear_fc1.weight", "mlp.gate_up_proj.weight"),  # already [gate; up]
    Copy("mlp.linear_fc2.weight", "mlp.down_proj.weight"))

FAMILY = Family(
    settings=FamilySettings(
        "glm", ("glm",), "GlmForCausalLM", "GlmConfig", qkv_bias=True, rotary_percent=0.5,
        rotary_interleaved=True, required=REQUIRED, dialect=ConfigDialect(template={
            "architectures": ["GlmForCausalLM"], "model_type": "glm", **TEMPLATE})),
    mapping=WeightMapping(layer=LAYER),
    template="glm4",
    sizes={"9b": Size(40, 4096, 13696, 32, 151552, 8192, Layout(
        tp=2, pp=2, micro_batch=1, global_batch=64), query_groups=2, head_dim=128,
        norm_eps=1.5625e-07)},
    notes="GLM-4-9B in transformers' layout (glm-4-9b-hf and its chat models); the "
          "remote-code GLM-4-9B checkpoints convert as chatglm3.")

"""config.json dialects: families whose config.json spells settings its own way.

For the trust_remote_code families (Baichuan2, Aquila, InternLM, InternLM2, ChatGLM3)
transformers has no config class either (ChatGLM: `num_layers`, `ffn_hidden_size`,
`multi_query_group_num`, ...); Aquila's and InternLM's config.json have LLaMA's keys and only
their own template and classes. The converter
reads every family through the llama-style keys of `families.py`; `to_llama_keys` adds those
keys next to the family's own, and `strip_llama_keys` takes them off again, so a config.json
read and written back keeps exactly the family's keys. The dialects of Baichuan2, Aquila,
InternLM, InternLM2 and ChatGLM3 are at the end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass(frozen=True)
class ConfigDialect:
    # llama-style key -> the family's key, where the two differ.
    keys: Dict[str, str] = field(default_factory=dict)
    # llama-style value = the family's value x scale (ChatGLM: rope_theta = rope_ratio x 10000).
    scales: Dict[str, float] = field(default_factory=dict)
    # A config.json of the family, for exporting a checkpoint that did not come from one.
    template: Dict[str, Any] = field(default_factory=dict)


def to_llama_keys(dialect: ConfigDialect, config: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(config)
    for llama, own in dialect.keys.items():
        if own in config:
            out[llama] = config[own] * dialect.scales.get(llama, 1)
    return out


def strip_llama_keys(dialect: ConfigDialect, config: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in config.items() if key not in dialect.keys}


def set_llama_value(dialect: ConfigDialect, config: Dict[str, Any], llama: str,
                    value: Any) -> None:
    """Write a llama-style setting under the family's key, if the family's config.json has one
    (a key it lacks keeps the family's fixed value; the caller checks that this is the one)."""
    own = dialect.keys.get(llama, llama)
    if own in config:
        scale = dialect.scales.get(llama)
        config[own] = value if scale is None else value / scale


# The families' dialects. Template values of None are filled in from the checkpoint.
_FILLED = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers",
           "max_position_embeddings", "rms_norm_eps", "vocab_size", "tie_word_embeddings")
_BAICHUAN2_TEMPLATE = {
    "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_act": "silu",
    "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                 "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
    **dict.fromkeys(_FILLED)}
BAICHUAN2 = ConfigDialect(template=_BAICHUAN2_TEMPLATE)
# Baichuan2-13B: no max_position_embeddings (ALiBi); model_max_length is its length.
BAICHUAN2_13B = ConfigDialect(keys={"max_position_embeddings": "model_max_length"}, template={
    key: value for key, value in _BAICHUAN2_TEMPLATE.items()
    if key != "max_position_embeddings"} | {"model_max_length": None})
# Aquila/Aquila2: LLaMA's keys, with their own remote-code classes.
AQUILA = ConfigDialect(template={
    "architectures": ["AquilaForCausalLM"], "model_type": "aquila", "hidden_act": "silu",
    "auto_map": {"AutoConfig": "configuration_aquila.AquilaConfig",
                 "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM"},
    **dict.fromkeys(_FILLED + ("num_key_value_heads", "rope_theta"))})
# InternLM-1: LLaMA's keys; RoPE's base sits in `rotary` (absent before the dynamic NTK
# update), at 10000 in every published checkpoint and the only value the converter accepts.
INTERNLM_ROTARY = (None, {"base": 10000, "type": "dynamic"}, {"base": 10000, "type": "origin"})
INTERNLM = ConfigDialect(template={
    "architectures": ["InternLMForCausalLM"], "model_type": "internlm", "hidden_act": "silu",
    "bias": True, "rotary": INTERNLM_ROTARY[1],
    "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                 "AutoModel": "modeling_internlm.InternLMForCausalLM",
                 "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
    **dict.fromkeys(_FILLED)})
INTERNLM2 = ConfigDialect(template={
    "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "hidden_act": "silu",
    "bias": False, "rope_scaling": None,
    "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                 "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    **dict.fromkeys(_FILLED + ("num_key_value_heads", "rope_theta"))})
_CHATGLM3_KEYS = {"num_hidden_layers": "num_layers", "intermediate_size": "ffn_hidden_size",
                  "max_position_embeddings": "seq_length", "rms_norm_eps": "layernorm_epsilon",
                  "num_key_value_heads": "multi_query_group_num", "head_dim": "kv_channels",
                  "vocab_size": "padded_vocab_size", "rope_theta": "rope_ratio"}
# ChatGLM3's architecture switches (families.py requires a config.json to hold these values).
CHATGLM3_FIXED = {"rmsnorm": True, "add_bias_linear": False, "add_qkv_bias": True,
                  "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
                  "multi_query_attention": True, "original_rope": True, "pre_seq_len": None}
CHATGLM3 = ConfigDialect(keys=_CHATGLM3_KEYS, scales={"rope_theta": 10000.0}, template={
    "architectures": ["ChatGLMModel"], "model_type": "chatglm", **CHATGLM3_FIXED,
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    **dict.fromkeys(("hidden_size", "num_attention_heads", "tie_word_embeddings")
                    + tuple(_CHATGLM3_KEYS.values()))})

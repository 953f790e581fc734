"""config.json dialects: families whose config.json spells settings its own way.

For the trust_remote_code families (Baichuan2, Aquila, InternLM, InternLM2, ChatGLM3, Qwen-1)
transformers has no config class either (ChatGLM: `num_layers`, `ffn_hidden_size`,
`multi_query_group_num`, ...); Aquila's and InternLM's config.json have LLaMA's keys and only
their own template and classes. The converter
reads every family through the llama-style keys of `families/hf_config.py`; `to_llama_keys` adds those
keys next to the family's own, and `strip_llama_keys` takes them off again, so a config.json
read and written back keeps exactly the family's keys. Each family's dialect lives in its
family file (modellink/models/families/).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class ConfigDialect:
    # llama-style key -> the family's key, where the two differ.
    keys: Dict[str, str] = field(default_factory=dict)
    # llama-style value = the family's value x scale (ChatGLM: rope_theta = rope_ratio x 10000).
    scales: Dict[str, float] = field(default_factory=dict)
    # A config.json of the family, for exporting a checkpoint that did not come from one.
    template: Dict[str, Any] = field(default_factory=dict)
    # The family's key for the context the model was trained at, where config.json holds one
    # beside max_position_embeddings (Qwen-1's seq_length, beyond which its dynamic NTK and
    # logn attention act): --seq-length on import, and on export where the template leaves it.
    seq_length: Optional[str] = None


def to_llama_keys(dialect: ConfigDialect, config: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(config)
    for llama, own in dialect.keys.items():
        if own in config:
            out[llama] = config[own] * dialect.scales.get(llama, 1)
    return out


def strip_llama_keys(dialect: ConfigDialect, config: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in config.items() if key not in dialect.keys}


def from_llama_keys(dialect: ConfigDialect, config: Dict[str, Any]) -> Dict[str, Any]:
    """A config in llama-style keys written in the family's own (a published size's
    config.json); where the family's key is itself a llama key the config holds (Bloom's
    hidden_size), the value given for it stands."""
    out = {key: value for key, value in config.items() if key not in dialect.keys}
    for llama, own in dialect.keys.items():
        if llama in config and own not in out:
            scale = dialect.scales.get(llama)
            out[own] = config[llama] if scale is None else config[llama] / scale
    return out


def set_llama_value(dialect: ConfigDialect, config: Dict[str, Any], llama: str,
                    value: Any) -> None:
    """Write a llama-style setting under the family's key, if the family's config.json has one
    (a key it lacks keeps the family's fixed value; the caller checks that this is the one)."""
    own = dialect.keys.get(llama, llama)
    if own in config:
        scale = dialect.scales.get(llama)
        config[own] = value if scale is None else value / scale


# The llama-style keys a remote-code template fills in from the checkpoint (as None).
FILLED = ("hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers",
          "max_position_embeddings", "rms_norm_eps", "vocab_size", "tie_word_embeddings")

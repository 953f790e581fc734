"""MiniCPM: LLaMA's tensors and layout (tied embeddings) under a remote-code config.json, with
three muP scales every checkpoint carries: the word embeddings times scale_emb, each attention
and MLP output times scale_depth / sqrt(layers) before its residual add, and the final hidden
states divided by hidden_size / dim_model_base before the head (--scale-emb, --scale-depth,
--dim-model-base, built in modellink/models/gpt_model.py)."""
from __future__ import annotations

from typing import Union

from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import (
    LLAMA_FIELDS, Family, FamilySettings, Field, Layout, Size)
from modellink.models.families.common import LLAMA_MAPPING


def _number(value: float) -> Union[int, float]:
    """A whole scale as config.json and ModelLink's scripts write it (12, not 12.0)."""
    return int(value) if float(value).is_integer() else float(value)


_SCALES = (Field("scale_emb", "scale_emb", "--scale-emb", _number),
           Field("dim_model_base", "dim_model_base", "--dim-model-base", _number),
           Field("scale_depth", "scale_depth", "--scale-depth", _number))
_DIALECT = ConfigDialect(template={
    "architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm", "hidden_act": "silu",
    "rope_scaling": None,
    "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                 "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
    **dict.fromkeys(FILLED + ("num_key_value_heads", "rope_theta")
                    + tuple(f.hf for f in _SCALES))})
# configuration_minicpm.py's values for keys a config.json leaves out (scales of 1: plain).
_DEFAULTS = {"tie_word_embeddings": True, "scale_emb": 1, "dim_model_base": 1, "scale_depth": 1}

FAMILY = Family(
    settings=FamilySettings(
        "minicpm", ("minicpm",), "MiniCPMForCausalLM", None, fields=LLAMA_FIELDS + _SCALES,
        required={"hidden_act": "silu", "attention_bias": False}, defaults=_DEFAULTS,
        dialect=_DIALECT),
    mapping=LLAMA_MAPPING,
    template="cpm",
    sizes={"2b": Size(40, 2304, 5760, 36, 122753, 4096, Layout(
        tp=1, pp=1, micro_batch=1, global_batch=8), tied=True,
        extra={"scale_emb": 12, "dim_model_base": 256, "scale_depth": 1.4})},
    notes="MiniCPM-2B and its sft/dpo chat models (MiniCPM3's attention is not covered).")

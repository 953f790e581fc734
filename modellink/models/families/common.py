"""Pieces several family files share: LLaMA's weight names and config requirements, and the
settings of the LlamaForCausalLM families.

Most families are LLaMA's layout with a few tensors added or renamed, so their mappings are
built from these rule tuples rather than spelled out again. LLaMA 3.x, Yi and CodeLlama are
LlamaForCausalLM checkpoints that llama2 converts as well; each is a family of its own for its
sizes, prompt template and scripts, claiming the model_type llama configs its RoPE settings
tell apart.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy, FusedQKV
from modellink.models.families.base import FamilySettings

ATTENTION = (
    Copy("input_layernorm.weight", "input_layernorm.weight"),
    FusedQKV("self_attention.linear_qkv.weight", "self_attn.q_proj.weight",
             "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    Copy("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    Copy("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
)
QKV_BIAS = (FusedQKV("self_attention.linear_qkv.bias", "self_attn.q_proj.bias",
                     "self_attn.k_proj.bias", "self_attn.v_proj.bias"),)
SWIGLU_MLP = (
    Concat("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    Copy("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
)
LLAMA_MAPPING = WeightMapping(layer=ATTENTION + SWIGLU_MLP)
LLAMA_REQUIRED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def rope_settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """The RoPE settings with `rope_type` always set: transformers 5 keeps them in
    `rope_parameters`, older configs in `rope_theta` and `rope_scaling` (`type` before 4.45)."""
    scaling = dict(config.get("rope_scaling") or {})
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    params = {**scaling, **(config.get("rope_parameters") or {})}
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


def plain_rope_base(*thetas: float) -> Callable[[Dict[str, Any]], bool]:
    """Claims the configs with unscaled RoPE at one of these bases (how LLaMA 3, Yi and
    CodeLlama tell their model_type llama configs apart)."""
    def claims(config: Dict[str, Any]) -> bool:
        rope = rope_settings(config)
        return rope["rope_type"] == "default" and float(rope["rope_theta"]) in thetas
    return claims


def llama_settings(name: str, claims: Callable[[Dict[str, Any]], bool],
                   rope_scalings: Tuple[str, ...] = ()) -> FamilySettings:
    """The settings of a family of LlamaForCausalLM checkpoints: llama2's, under its own name,
    for the model_type llama configs `claims` picks (llama2 keeps taking every one)."""
    return FamilySettings(name, ("llama",), "LlamaForCausalLM", "LlamaConfig",
                          required=LLAMA_REQUIRED, rope_scalings=rope_scalings, claims=claims)

"""Pieces several family files share: LLaMA's weight names and config requirements.

Most families are LLaMA's layout with a few tensors added or renamed, so their mappings are
built from these rule tuples rather than spelled out again.
"""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy, FusedQKV

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

"""Baichuan2: LLaMA's layout with q/k/v packed in one W_pack and a NormHead (logits from the
lm_head rows divided by their norms). The 13B model uses ALiBi instead of RoPE; its
config.json has model_max_length instead of max_position_embeddings. Baichuan (the first
release, baichuan.py) shares all of this but the NormHead, and its model_type: each refuses a
config.json with the other's vocabulary size."""
from __future__ import annotations

from typing import Any, Dict

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import PackedQKV
from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import (
    LLAMA_ARGS, LLAMA_FLAGS, Family, FamilySettings, Layout, Size, Variant)
from modellink.models.families.common import ATTENTION, SWIGLU_MLP

# The published vocabularies: Baichuan's and Baichuan2's.
BAICHUAN1_VOCAB, BAICHUAN2_VOCAB = 64000, 125696


def _is_baichuan2(config: Dict[str, Any]) -> bool:
    return config.get("vocab_size") != BAICHUAN1_VOCAB


# Template values of None are filled in from the checkpoint.
TEMPLATE = {
    "architectures": ["BaichuanForCausalLM"], "model_type": "baichuan", "hidden_act": "silu",
    "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                 "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
    **dict.fromkeys(FILLED)}
DIALECT_13B = ConfigDialect(keys={"max_position_embeddings": "model_max_length"}, template={
    key: value for key, value in TEMPLATE.items()
    if key != "max_position_embeddings"} | {"model_max_length": None})
LAYER = (ATTENTION[0], PackedQKV("self_attention.linear_qkv.weight", "self_attn.W_pack.weight")
         ) + ATTENTION[2:] + SWIGLU_MLP

# The same weights as 7B, ALiBi instead of RoPE, model_max_length for length.
_BAICHUAN2_13B = FamilySettings(
    "baichuan2", ("baichuan",), "BaichuanForCausalLM", None, required={"hidden_act": "silu"},
    fixed_flags=tuple("alibi" if flag == "rope" else flag for flag in LLAMA_FLAGS),
    checked_args=dict(LLAMA_ARGS, position_embedding_type="alibi"),
    required_keys={"model_max_length": "the 13B model's sequence length (a Baichuan config "
                                       "without max_position_embeddings is the ALiBi 13B)"},
    dialect=DIALECT_13B, claims=_is_baichuan2)

FAMILY = Family(
    settings=FamilySettings(
        "baichuan2", ("baichuan",), "BaichuanForCausalLM", None, required={"hidden_act": "silu"},
        dialect=ConfigDialect(template=TEMPLATE), claims=_is_baichuan2,
        variant=Variant(_BAICHUAN2_13B, lambda config: "max_position_embeddings" not in config,
                        lambda args, _: args.position_embedding_type == "alibi")),
    mapping=WeightMapping(layer=LAYER, normalized_head=True),
    template="baichuan2",
    sizes={
        "7b": Size(32, 4096, 11008, 32, BAICHUAN2_VOCAB, 4096, Layout(
            tp=8, pp=1, micro_batch=4, global_batch=32), norm_eps=1e-6),
        "13b": Size(40, 5120, 13696, 40, BAICHUAN2_VOCAB, 4096, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=32, recompute="full"), norm_eps=1e-6,
            variant=True),
    },
    notes="Baichuan2-7B (RoPE) and Baichuan2-13B (ALiBi, the family's variant).")

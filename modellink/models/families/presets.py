"""Model-shape flags of a published size by name ("llama2-7b"), for the planner's --model and
the example scripts.

A size is written as the config.json that model ships (in its family's own keys), and the
flags come from the same `training_flags()` that converting its checkpoint uses, so a preset
and a converted checkpoint of that size cannot disagree.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from modellink.models.config_dialects import from_llama_keys
from modellink.models.families.base import Family, FamilyConfigError, FamilySettings, Size
from modellink.models.families.hf_config import training_flags
from modellink.models.families.registry import FAMILIES


def preset_names() -> List[str]:
    return [f"{family}-{size}" for family, spec in FAMILIES.items() for size in spec.sizes]


def get_size(name: str) -> Tuple[Family, Size]:
    """The family and size of a preset name, or a FamilyConfigError listing the valid ones."""
    for family_name, family in FAMILIES.items():
        size = family.sizes.get(name[len(family_name) + 1:]) \
            if name.startswith(family_name + "-") else None
        if size is not None:
            return family, size
    raise FamilyConfigError(f"unknown model {name!r}; choose from {', '.join(preset_names())}")


def size_config(settings: FamilySettings, size: Size) -> Dict[str, Any]:
    """The size's config.json in llama-style keys, with the values the family requires."""
    config = {attr: allowed[0] if isinstance(allowed, tuple) else allowed
              for attr, allowed in settings.required.items()}
    config.update(
        model_type=settings.model_types[0], num_hidden_layers=size.layers,
        hidden_size=size.hidden, intermediate_size=size.ffn, num_attention_heads=size.heads,
        num_key_value_heads=size.groups, head_dim=size.head_dim or size.hidden // size.heads,
        vocab_size=size.vocab, max_position_embeddings=size.seq_length,
        rms_norm_eps=size.norm_eps, rope_theta=size.rope_theta, tie_word_embeddings=size.tied)
    if settings.moe:
        moe = {"num_experts": size.experts, "moe_router_topk": size.topk,
               "moe_ffn_hidden_size": size.moe_ffn or size.ffn,
               "moe_shared_expert_intermediate_size": size.shared_ffn}
        # Fields beyond these (DeepSeek's shared experts, dense layers) come in size.extra.
        config.update({field.hf: moe[field.arg] for field in settings.moe_fields
                       if field.arg in moe})
    config.update(size.extra)
    return config


def preset_flags(name: str) -> List[str]:
    """The `pretrain_gpt.py` model-shape flags of a published size, e.g. "llama2-7b"."""
    family, size = get_size(name)
    settings = family.settings.variant.settings if size.variant else family.settings
    config = size_config(settings, size)
    if settings.dialect is not None:
        config = from_llama_keys(settings.dialect, config)
    return training_flags(settings, config)

"""Baichuan (the first release: Baichuan-7B, Baichuan-13B and its chat model): Baichuan2's
layout and config.json (q/k/v packed in W_pack; 7B RoPE, 13B ALiBi with model_max_length) with
a plain lm_head, no NormHead. Both families' config.json say model_type "baichuan"; each refuses
one with the other's published vocabulary (64000 tokens here, 125696 in Baichuan2)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

from modellink.checkpoint.mappings import WeightMapping
from modellink.models.config_dialects import ConfigDialect
from modellink.models.families import baichuan2
from modellink.models.families.base import Family, Layout, Size


def _is_baichuan1(config: Dict[str, Any]) -> bool:
    return config.get("vocab_size") != baichuan2.BAICHUAN2_VOCAB


# Baichuan-7B's classes are spelled BaiChuan; Baichuan-13B's are Baichuan2's.
_TEMPLATE_7B = dict(
    baichuan2.TEMPLATE, architectures=["BaiChuanForCausalLM"],
    auto_map={"AutoConfig": "configuration_baichuan.BaiChuanConfig",
              "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"})
_SETTINGS_2 = baichuan2.FAMILY.settings
_VARIANT_2 = _SETTINGS_2.variant

FAMILY = Family(
    settings=replace(
        _SETTINGS_2, name="baichuan", architecture="BaiChuanForCausalLM",
        dialect=ConfigDialect(template=_TEMPLATE_7B), claims=_is_baichuan1,
        variant=replace(_VARIANT_2, settings=replace(_VARIANT_2.settings, name="baichuan",
                                                     claims=_is_baichuan1))),
    mapping=WeightMapping(layer=baichuan2.LAYER),
    template="baichuan",
    sizes={
        "7b": Size(32, 4096, 11008, 32, baichuan2.BAICHUAN1_VOCAB, 4096, Layout(
            tp=8, pp=1, micro_batch=4, global_batch=32), norm_eps=1e-6),
        "13b": Size(40, 5120, 13696, 40, baichuan2.BAICHUAN1_VOCAB, 4096, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=32, recompute="full"), norm_eps=1e-6,
            variant=True),
    },
    notes="Baichuan-7B (RoPE) and Baichuan-13B (ALiBi, the family's variant); Baichuan2 "
          "converts as baichuan2.")

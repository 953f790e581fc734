"""Mistral: LLaMA's layout with grouped-query attention and a sliding attention window."""
from __future__ import annotations

from modellink.models.families.base import Family, FamilySettings, Field, Layout, Size
from modellink.models.families.common import LLAMA_MAPPING

# HF's window of W keys ends at the query's own; --sliding-window W counts the keys before it.
_WINDOW = (Field("sliding_window", "sliding_window", "--sliding-window", offset=-1),)

FAMILY = Family(
    settings=FamilySettings("mistral", ("mistral",), "MistralForCausalLM", "MistralConfig",
                            required={"hidden_act": "silu"}, optional_fields=_WINDOW,
                            defaults={"sliding_window": 4096}),
    mapping=LLAMA_MAPPING,
    template="mistral",
    sizes={"7b": Size(32, 4096, 14336, 32, 32000, 32768, Layout(
        tp=8, pp=1, micro_batch=1, global_batch=32), query_groups=8,
        extra={"sliding_window": 4096})},
    notes="Mistral-7B v0.1 (a 4096-token window); later versions set sliding_window null.")

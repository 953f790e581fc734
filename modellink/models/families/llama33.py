"""LLaMA 3.3 (70B Instruct): LLaMA 3.1-70B's architecture and RoPE scaling with new weights;
its configs are LLaMA 3.1's, so it claims the same ones as llama31 does."""
from __future__ import annotations

from modellink.models.families.base import Family, Layout
from modellink.models.families.common import LLAMA_MAPPING, llama_settings
from modellink.models.families.llama3 import llama3_size, scaled_by
from modellink.models.families.llama31 import ROPE

FAMILY = Family(
    settings=llama_settings("llama33", scaled_by(8.0), rope_scalings=("llama3",)),
    mapping=LLAMA_MAPPING,
    template="llama3",
    sizes={
        "70b": llama3_size(80, 8192, 28672, 64, Layout(tp=8, pp=4, micro_batch=1,
                                                       global_batch=256, recompute="full"),
                           rope=ROPE),
    },
    notes="Llama-3.3-70B-Instruct (llama3 RoPE scaling, factor 8, as LLaMA 3.1).")

"""LLaMA 3.1 (8B, 70B, 405B): LLaMA 3 with a 131072-token context reached by llama3 RoPE
scaling, factor 8 over the original 8192 positions (`--rope-scaling-type llama3
--rope-scaling-factor 8 ...`), which is how this family claims its configs."""
from __future__ import annotations

from modellink.models.families.base import Family, Layout
from modellink.models.families.common import LLAMA_MAPPING, llama_settings
from modellink.models.families.llama3 import llama3_rope, llama3_size, scaled_by

ROPE = llama3_rope(8.0)

FAMILY = Family(
    settings=llama_settings("llama31", scaled_by(8.0), rope_scalings=("llama3",)),
    mapping=LLAMA_MAPPING,
    template="llama3",
    sizes={
        "8b": llama3_size(32, 4096, 14336, 32, Layout(tp=8, pp=1, micro_batch=1,
                                                      global_batch=128), rope=ROPE),
        "70b": llama3_size(80, 8192, 28672, 64, Layout(tp=8, pp=4, micro_batch=1,
                                                       global_batch=256, recompute="full"),
                           rope=ROPE),
        # 405.85e9 parameters at 16 B each (bf16 weights and gradients, fp32 main weights and
        # Adam moments, unsplit at DP=1) are 6.5 TB: at least 102 devices of 64 GB before any
        # activation. TP8 x PP21 over 21 nodes holds 6 layers a stage, 2.39e9 parameters or
        # 38 GB, and the first stage's embedding 4.2 GB more (planner peak 53 GB); PP18's
        # 7 layers would peak at 61 GB, too close to 64 to leave room for buffers.
        "405b": llama3_size(126, 16384, 53248, 128, Layout(tp=8, pp=21, micro_batch=1,
                                                           global_batch=512, recompute="full"),
                            rope=ROPE),
    },
    notes="Llama-3.1-8B/70B/405B and their Instruct models (llama3 RoPE scaling, factor 8).")

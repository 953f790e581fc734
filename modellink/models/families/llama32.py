"""LLaMA 3.2 text models (1B, 3B): LLaMA 3.1's attention and context with the input embedding
tied to the output layer and llama3 RoPE scaling by a factor of 32 instead of 8, which is how
this family claims its configs."""
from __future__ import annotations

from modellink.models.families.base import Family, Layout
from modellink.models.families.common import LLAMA_MAPPING, llama_settings
from modellink.models.families.llama3 import llama3_rope, llama3_size, scaled_by

ROPE = llama3_rope(32.0)

FAMILY = Family(
    settings=llama_settings("llama32", scaled_by(32.0), rope_scalings=("llama3",)),
    mapping=LLAMA_MAPPING,
    template="llama3",
    sizes={
        "1b": llama3_size(16, 2048, 8192, 32, Layout(tp=1, pp=1, micro_batch=1,
                                                     global_batch=64), rope=ROPE, tied=True),
        "3b": llama3_size(28, 3072, 8192, 24, Layout(tp=2, pp=1, micro_batch=1,
                                                     global_batch=64), rope=ROPE, tied=True),
    },
    notes="Llama-3.2-1B/3B and their Instruct models (tied embeddings, llama3 RoPE scaling, "
          "factor 32); the 11B/90B Vision models are not covered.")

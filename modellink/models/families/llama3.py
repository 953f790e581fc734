"""LLaMA 3 (Meta-Llama-3-8B/70B and their Instruct models): LLaMA 2's layout with a
128256-token vocabulary, 8 query groups, RoPE base 500000 and an 8192-token context.

llama2 converts the same checkpoints (ModelLink spells every LLaMA `--model-type-hf llama2`);
this family claims the plain-RoPE configs with LLaMA 3's base and carries their sizes, the
llama3 chat template and scripts. The numbers every LLaMA 3.x size shares live here, for
llama31.py, llama32.py and llama33.py too.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from modellink.models.families.base import Family, Layout, Size
from modellink.models.families.common import (
    LLAMA_MAPPING, llama_settings, plain_rope_base, rope_settings)

VOCAB = 128256
ROPE_THETA = 500000.0
# The context LLaMA 3 was trained at, which 3.1+ scale RoPE from.
CONTEXT = 8192


def llama3_rope(factor: float) -> Dict[str, Any]:
    """rope_parameters of LLaMA 3.1+: llama3 scaling by `factor` over LLaMA 3's context."""
    return {"rope_type": "llama3", "rope_theta": ROPE_THETA, "factor": factor,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": CONTEXT}


def scaled_by(factor: float) -> Callable[[Dict[str, Any]], bool]:
    """Claims the configs with llama3 RoPE scaling by `factor` (3.1 and 3.3: 8; 3.2: 32)."""
    def claims(config: Dict[str, Any]) -> bool:
        rope = rope_settings(config)
        return rope["rope_type"] == "llama3" and float(rope.get("factor", 0)) == factor
    return claims


def llama3_size(layers: int, hidden: int, ffn: int, heads: int, layout: Layout,
                rope: Optional[Dict[str, Any]] = None, tied: bool = False) -> Size:
    """A LLaMA 3.x size; with `rope` (llama3_rope) its context is 131072 tokens."""
    return Size(layers, hidden, ffn, heads, VOCAB, 131072 if rope else CONTEXT, layout,
                query_groups=8, rope_theta=ROPE_THETA, tied=tied,
                extra={"rope_parameters": rope} if rope else {})


FAMILY = Family(
    settings=llama_settings("llama3", plain_rope_base(ROPE_THETA)),
    mapping=LLAMA_MAPPING,
    template="llama3",
    sizes={
        "8b": llama3_size(32, 4096, 14336, 32, Layout(tp=8, pp=1, micro_batch=1,
                                                      global_batch=64)),
        "70b": llama3_size(80, 8192, 28672, 64, Layout(tp=8, pp=4, micro_batch=1,
                                                       global_batch=256, recompute="full")),
    },
    notes="Meta-Llama-3-8B/70B and their Instruct models (RoPE base 500000, no scaling).")

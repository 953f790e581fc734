"""Qwen 1.5, 2 and 2.5: LLaMA's layout with biases on the query, key and value projections."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION, QKV_BIAS, SWIGLU_MLP

_QWEN2_VOCAB = 152064

FAMILY = Family(
    settings=FamilySettings("qwen", ("qwen2",), "Qwen2ForCausalLM", "Qwen2Config", qkv_bias=True,
                            required={"hidden_act": "silu", "use_sliding_window": False}),
    mapping=WeightMapping(layer=ATTENTION + QKV_BIAS + SWIGLU_MLP),
    template="qwen",
    sizes={
        "0.5b": Size(24, 896, 4864, 14, 151936, 32768, Layout(
            tp=1, pp=1, micro_batch=4, global_batch=64), query_groups=2, norm_eps=1e-6,
            rope_theta=1e6, tied=True),
        "7b": Size(28, 3584, 18944, 28, _QWEN2_VOCAB, 32768, Layout(
            tp=4, pp=1, micro_batch=1, global_batch=64), query_groups=4, norm_eps=1e-6,
            rope_theta=1e6),
        "72b": Size(80, 8192, 29568, 64, _QWEN2_VOCAB, 32768, Layout(
            tp=8, pp=4, micro_batch=1, global_batch=256, recompute="full"), query_groups=8,
            norm_eps=1e-6, rope_theta=1e6),
    },
    notes="Qwen2 sizes; Qwen1.5 and Qwen2.5 checkpoints are the same model_type and layout.")

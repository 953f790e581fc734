"""Qwen2.5 (and Qwen1.5 and Qwen2, the same layout and model_type qwen2): LLaMA's layout with
biases on the query, key and value projections. ModelLink converts these as `--model-type-hf
llama2 --add-qkv-bias`, which means this family here (modellink/checkpoint/cli.py)."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION, QKV_BIAS, SWIGLU_MLP

_VOCAB_SMALL, _VOCAB = 151936, 152064
_CONTEXT = 32768

FAMILY = Family(
    settings=FamilySettings("qwen25", ("qwen2",), "Qwen2ForCausalLM", "Qwen2Config",
                            qkv_bias=True,
                            required={"hidden_act": "silu", "use_sliding_window": False}),
    mapping=WeightMapping(layer=ATTENTION + QKV_BIAS + SWIGLU_MLP),
    template="qwen",
    sizes={
        "0.5b": Size(24, 896, 4864, 14, _VOCAB_SMALL, _CONTEXT, Layout(
            tp=1, pp=1, micro_batch=4, global_batch=64), query_groups=2, norm_eps=1e-6,
            rope_theta=1e6, tied=True),
        "1.5b": Size(28, 1536, 8960, 12, _VOCAB_SMALL, _CONTEXT, Layout(
            tp=1, pp=1, micro_batch=2, global_batch=64), query_groups=2, norm_eps=1e-6,
            rope_theta=1e6, tied=True),
        "3b": Size(36, 2048, 11008, 16, _VOCAB_SMALL, _CONTEXT, Layout(
            tp=2, pp=1, micro_batch=2, global_batch=64), query_groups=2, norm_eps=1e-6,
            rope_theta=1e6, tied=True),
        "7b": Size(28, 3584, 18944, 28, _VOCAB, _CONTEXT, Layout(
            tp=4, pp=1, micro_batch=1, global_batch=64), query_groups=4, norm_eps=1e-6,
            rope_theta=1e6),
        "14b": Size(48, 5120, 13824, 40, _VOCAB, _CONTEXT, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=64), query_groups=8, norm_eps=1e-6,
            rope_theta=1e6),
        "32b": Size(64, 5120, 27648, 40, _VOCAB, _CONTEXT, Layout(
            tp=8, pp=2, micro_batch=1, global_batch=64), query_groups=8, norm_eps=1e-6,
            rope_theta=1e6),
        "72b": Size(80, 8192, 29568, 64, _VOCAB, _CONTEXT, Layout(
            tp=8, pp=4, micro_batch=1, global_batch=256, recompute="full"), query_groups=8,
            norm_eps=1e-6, rope_theta=1e6),
    },
    notes="Qwen2.5 sizes as the Instruct models' config.json has them (32768 positions); the "
          "base models' larger max_position_embeddings and Qwen1.5/Qwen2 checkpoints convert "
          "as they are.")

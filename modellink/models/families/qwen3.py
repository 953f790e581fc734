"""Qwen3: LLaMA's layout with RMSNorm over each head's queries and keys, no q/k/v biases."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION, SWIGLU_MLP

# One norm weight of head_dim, shared by every head.
_QK_NORM = (Copy("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
            Copy("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"))


def _size(layers: int, hidden: int, ffn: int, heads: int, layout: Layout,
          tied: bool = False) -> Size:
    """Every Qwen3 size has 8 query groups of 128 channels and a 40960-token context."""
    return Size(layers, hidden, ffn, heads, 151936, 40960, layout, query_groups=8, head_dim=128,
                norm_eps=1e-6, rope_theta=1e6, tied=tied)


FAMILY = Family(
    settings=FamilySettings("qwen3", ("qwen3",), "Qwen3ForCausalLM", "Qwen3Config",
                            qk_layernorm=True,
                            required={"hidden_act": "silu", "attention_bias": False,
                                      "use_sliding_window": False}),
    mapping=WeightMapping(layer=ATTENTION + _QK_NORM + SWIGLU_MLP),
    template="qwen3",
    sizes={
        "0.6b": _size(28, 1024, 3072, 16, Layout(tp=1, pp=1, micro_batch=4, global_batch=64),
                      tied=True),
        "1.7b": _size(28, 2048, 6144, 16, Layout(tp=1, pp=1, micro_batch=2, global_batch=64,
                                                 recompute="full"), tied=True),
        "4b": _size(36, 2560, 9728, 32, Layout(tp=2, pp=1, micro_batch=1, global_batch=64,
                                               recompute="full"), tied=True),
        "8b": _size(36, 4096, 12288, 32, Layout(tp=4, pp=1, micro_batch=1, global_batch=128,
                                                recompute="full")),
        "14b": _size(40, 5120, 17408, 40, Layout(tp=8, pp=1, micro_batch=1, global_batch=128,
                                                 recompute="full")),
        "32b": _size(64, 5120, 25600, 64, Layout(tp=8, pp=2, micro_batch=1, global_batch=128,
                                                 recompute="full")),
    },
    notes="The dense Qwen3 models.")

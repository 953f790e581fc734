"""Gemma 2: Gemma plus norms after attention and after the MLP, soft-capped attention and
output logits, its own attention scale, and sliding-window attention on every other layer."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.families.base import Family, FamilySettings, Field, Layout, Size
from modellink.models.families.common import ATTENTION, SWIGLU_MLP
from modellink.models.families.gemma import ARGS, FEATURES, FLAGS, REQUIRED, VOCAB

_FIELDS = (
    Field("attn_logit_softcapping", "attn_logit_softcapping", "--attn-logit-softcapping", float),
    Field("final_logit_softcapping", "output_logit_softcapping", "--output-logit-softcapping",
          float),
    Field("query_pre_attn_scalar", "query_pre_attn_scalar", "--query-pre-attn-scalar"),
    Field("sliding_window", "interleave_sliding_window", "--interleave-sliding-window",
          off_as="max_position_embeddings"),
)
_DEFAULTS = {"tie_word_embeddings": True, "attn_logit_softcapping": 50.0,
             "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256,
             "sliding_window": 4096}

FAMILY = Family(
    settings=FamilySettings("gemma2", ("gemma2",), "Gemma2ForCausalLM", "Gemma2Config",
                            fixed_flags=FLAGS, features=FEATURES + ("post_norm",),
                            checked_args=ARGS, optional_fields=_FIELDS, defaults=_DEFAULTS,
                            layer_pattern=("sliding_attention", "full_attention"),
                            required={"hidden_activation": "gelu_pytorch_tanh", **REQUIRED}),
    # Four norms per layer: post_attention_layernorm follows attention here.
    mapping=WeightMapping(layer=(
        ATTENTION[0], ATTENTION[1], ATTENTION[2],
        Copy("post_attn_norm.weight", "post_attention_layernorm.weight"),
        Copy("pre_mlp_layernorm.weight", "pre_feedforward_layernorm.weight"),
        Copy("post_mlp_layernorm.weight", "post_feedforward_layernorm.weight"),
    ) + SWIGLU_MLP),
    template="gemma",
    sizes={
        "2b": Size(26, 2304, 9216, 8, VOCAB, 8192, Layout(
            tp=1, pp=1, micro_batch=1, global_batch=64), query_groups=4, head_dim=256,
            norm_eps=1e-6, tied=True),
        "9b": Size(42, 3584, 14336, 16, VOCAB, 8192, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=64, recompute="full"), query_groups=8,
            head_dim=256, norm_eps=1e-6, tied=True),
        "27b": Size(46, 4608, 36864, 32, VOCAB, 8192, Layout(
            tp=8, pp=2, micro_batch=1, global_batch=64, recompute="full"), query_groups=16,
            head_dim=128, norm_eps=1e-6, tied=True, extra={"query_pre_attn_scalar": 144}),
    },
    notes="Gemma 2 (2B, 9B, 27B).")

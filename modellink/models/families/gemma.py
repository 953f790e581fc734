"""Gemma: GeGLU with a tanh GELU gate, RMSNorm scaling by 1 + weight, and embeddings multiplied
by sqrt(hidden); transformers reads Gemma's legacy hidden_act "gelu" as the tanh GELU."""
from __future__ import annotations

from modellink.models.families.base import LLAMA_ARGS, Family, FamilySettings, Layout, Size
from modellink.models.families.common import LLAMA_MAPPING

FLAGS = ("--normalization", "RMSNorm", "--position-embedding-type", "rope",
         "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0")
ARGS = dict(LLAMA_ARGS, swiglu=False)
FEATURES = ("gelu_tanh", "add_rmsnorm_offset", "input_embeds_norm")
REQUIRED = {"attention_bias": False, "use_bidirectional_attention": (None, False)}
VOCAB = 256000

FAMILY = Family(
    settings=FamilySettings("gemma", ("gemma",), "GemmaForCausalLM", "GemmaConfig",
                            fixed_flags=FLAGS, features=FEATURES, checked_args=ARGS,
                            defaults={"tie_word_embeddings": True},
                            required={"hidden_act": ("gelu_pytorch_tanh", "gelu"), **REQUIRED}),
    mapping=LLAMA_MAPPING,
    template="gemma",
    sizes={
        "2b": Size(18, 2048, 16384, 8, VOCAB, 8192, Layout(
            tp=1, pp=1, micro_batch=1, global_batch=64), query_groups=1, head_dim=256,
            norm_eps=1e-6, tied=True),
        "7b": Size(28, 3072, 24576, 16, VOCAB, 8192, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=64), head_dim=256, norm_eps=1e-6, tied=True),
    },
    notes="Gemma 1 (2B with multi-query attention, 7B).")

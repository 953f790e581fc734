"""Yi (01.AI): LlamaForCausalLM checkpoints with a 64000-token vocabulary, grouped-query
attention and a RoPE base of 5e6 (1e7 for the 200K-context models), which is how this family
claims its configs; the chat models use ChatML."""
from __future__ import annotations

from modellink.models.families.base import Family, Layout, Size
from modellink.models.families.common import LLAMA_MAPPING, llama_settings, plain_rope_base

_VOCAB = 64000
_ROPE_THETAS = (5e6, 1e7)


FAMILY = Family(
    settings=llama_settings("yi", plain_rope_base(*_ROPE_THETAS)),
    mapping=LLAMA_MAPPING,
    template="chatml",
    sizes={
        # 4 query groups: tensor parallelism of at most 4.
        "6b": Size(32, 4096, 11008, 32, _VOCAB, 4096, Layout(tp=4, pp=1, micro_batch=1,
                                                              global_batch=64),
                   query_groups=4, rope_theta=5e6),
        "34b": Size(60, 7168, 20480, 56, _VOCAB, 4096, Layout(
            tp=8, pp=2, micro_batch=1, global_batch=128, recompute="full"), query_groups=8,
            rope_theta=5e6),
    },
    notes="Yi-6B/34B, their chat and 200K-context models, and Yi-1.5 (6B/34B).")

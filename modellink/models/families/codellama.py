"""CodeLlama (Meta): LLaMA 2's layout with a RoPE base of 1e6 for a 16384-token context, which
is how this family claims its configs. The 7B and 13B base and Instruct models add 16
infilling tokens to LLaMA 2's 32000 and keep one query group per head; 34B has 8 groups and no
infilling tokens."""
from __future__ import annotations

from modellink.models.families.base import Family, Layout, Size
from modellink.models.families.common import LLAMA_MAPPING, llama_settings, plain_rope_base

_ROPE_THETA = 1e6


FAMILY = Family(
    settings=llama_settings("codellama", plain_rope_base(_ROPE_THETA)),
    mapping=LLAMA_MAPPING,
    template="llama2",
    sizes={
        "7b": Size(32, 4096, 11008, 32, 32016, 16384, Layout(tp=8, pp=1, micro_batch=1,
                                                              global_batch=64),
                   rope_theta=_ROPE_THETA),
        "13b": Size(40, 5120, 13824, 40, 32016, 16384, Layout(tp=8, pp=1, micro_batch=1,
                                                               global_batch=64),
                    rope_theta=_ROPE_THETA),
        "34b": Size(48, 8192, 22016, 64, 32000, 16384, Layout(
            tp=8, pp=2, micro_batch=2, global_batch=16, recompute="full"), query_groups=8,
            rope_theta=_ROPE_THETA),
    },
    notes="CodeLlama-7B/13B/34B: base, Python and Instruct models.")

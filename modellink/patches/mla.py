"""Patches to megatron-core's multi-latent attention (DeepSeek-V2's MLA)."""
import importlib.util
from typing import List

from modellink.patches.registry import Patch


def mla_patches() -> List[Patch]:
    return [
        # The module's own import of the Transformer Engine extension succeeds without TE
        # (stand-ins), so it tests isinstance() against a non-type and fails in __init__.
        Patch("megatron.core.transformer.multi_latent_attention.HAVE_TE",
              importlib.util.find_spec("transformer_engine") is not None,
              "megatron-core 0.16.1 believes Transformer Engine present whenever its extension "
              "module imports, and MLASelfAttention then fails without it"),
    ]

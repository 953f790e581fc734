"""Patches to megatron-core's mixture-of-experts code."""
from typing import List

from modellink.patches.registry import Patch


def moe_patches() -> List[Patch]:
    return [
        Patch("megatron.core.transformer.moe.moe_utils.te_general_gemm", None,
              "megatron-core 0.16.1 tests this Transformer Engine symbol without defining it "
              "when TE is absent (NameError in the router); None selects its torch path",
              fills_missing=True),
    ]

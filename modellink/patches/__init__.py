"""Every patch over megatron-core and torch, registered in one place.

`apply_patches()` applies the always-on group; backends apply their own group when chosen.
"""
from __future__ import annotations

from typing import List, Optional

from modellink.backend.cpu import cpu_patches
from modellink.patches.cross_entropy import cross_entropy_patches
from modellink.patches.forward_only import forward_only_patches
from modellink.patches.grad_accumulation import grad_accumulation_patches
from modellink.patches.mla import mla_patches
from modellink.patches.moe import moe_patches
from modellink.patches.multi_tensor import multi_tensor_patches
from modellink.patches.optimizer import optimizer_patches
from modellink.patches.registry import Patch, PatchRegistry

REGISTRY = PatchRegistry()
for _patch in (cpu_patches() + forward_only_patches() + mla_patches() + moe_patches()
               + optimizer_patches() + multi_tensor_patches() + cross_entropy_patches()
               + grad_accumulation_patches()):
    REGISTRY.register(_patch)


def apply_patches(group: Optional[str] = "megatron-core") -> None:
    REGISTRY.apply(group)


def list_patches() -> List[Patch]:
    return list(REGISTRY.patches)

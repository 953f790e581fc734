"""One registry of every change we make to upstream (megatron-core / torch) behaviour.

A patch names its target by dotted path, the replacement, and one line saying why no
extension point serves. Patches are applied once; `python -m modellink.patches` lists them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass(frozen=True)
class Patch:
    target: str  # "package.module.attr" or "package.module.Class.attr"
    replacement: Any
    reason: str
    group: str = "megatron-core"
    # When set, the replacement is built from the original (a wrapper).
    wraps: bool = False


@dataclass
class PatchRegistry:
    patches: List[Patch] = field(default_factory=list)
    _applied: Dict[str, Any] = field(default_factory=dict)

    def register(self, patch: Patch) -> None:
        if any(p.target == patch.target for p in self.patches):
            raise ValueError(f"patch target registered twice: {patch.target}")
        self.patches.append(patch)

    def apply(self, group: str | None = None) -> None:
        for patch in self.patches:
            if patch.target in self._applied or (group is not None and patch.group != group):
                continue
            owner, attr = _resolve_owner(patch.target)
            original = getattr(owner, attr, None)
            value = patch.replacement(original) if patch.wraps else patch.replacement
            setattr(owner, attr, value)
            self._applied[patch.target] = original

    def applied(self) -> List[str]:
        return list(self._applied)


def _resolve_owner(target: str) -> tuple[Any, str]:
    """Import the longest importable module prefix, then walk attributes to the owner."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:-1]:
            obj = getattr(obj, name)
        return obj, parts[-1]
    raise ImportError(f"cannot resolve patch target {target}")


"""One registry of every change we make to upstream (megatron-core / torch) behaviour.

A patch names its target by dotted path, the replacement, and one line saying why no
extension point serves. Patches are applied once; `python -m modellink.patches` lists them.
A target that does not exist is refused: setting it would add an attribute nobody reads (a
renamed upstream symbol), and the fix would silently stop applying.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple


@dataclass(frozen=True)
class Patch:
    target: str  # "package.module.attr" or "package.module.Class.attr"
    replacement: Any
    reason: str
    group: str = "megatron-core"
    # When set, the replacement is built from the original (a wrapper).
    wraps: bool = False
    # The original's parameters the replacement relies on (it calls or mimics them).
    params: Tuple[str, ...] = ()
    # A name upstream leaves undefined in some installs (an optional dependency's symbol):
    # defined where it is missing, left alone where it exists.
    fills_missing: bool = False


class PatchError(RuntimeError):
    """A patch whose target is not where the installed upstream package should have it."""


@dataclass
class PatchRegistry:
    patches: List[Patch] = field(default_factory=list)
    _applied: Dict[str, Any] = field(default_factory=dict)

    def register(self, patch: Patch) -> None:
        if any(p.target == patch.target for p in self.patches):
            raise PatchError(f"patch target registered twice: {patch.target}")
        self.patches.append(patch)

    def apply(self, group: str | None = None) -> None:
        for patch in self.patches:
            if patch.target in self._applied or (group is not None and patch.group != group):
                continue
            owner, attr = _resolve_owner(patch.target)
            present = hasattr(owner, attr)
            if patch.fills_missing and present:
                continue
            if not present and not patch.fills_missing:
                raise PatchError(f"patch target {patch.target} does not exist: renamed or "
                                 f"removed upstream; update modellink/patches")
            original = getattr(owner, attr, None)
            value = patch.replacement(original) if patch.wraps else patch.replacement
            setattr(owner, attr, value)
            self._applied[patch.target] = original

    def applied(self) -> List[str]:
        return list(self._applied)

    def problems(self) -> List[str]:
        """What is wrong with each patch's target in the installed packages (nothing is
        applied): a missing target or owner, or a parameter the replacement relies on."""
        found = []
        for patch in self.patches:
            try:
                owner, attr = _resolve_owner(patch.target)
            except PatchError as exc:
                found.append(str(exc))
                continue
            if not hasattr(owner, attr):
                if not patch.fills_missing:
                    found.append(f"{patch.target}: does not exist")
                continue
            original = self._applied.get(patch.target, getattr(owner, attr))
            found += [f"{patch.target}: {problem}"
                      for problem in missing_params(original, patch.params)]
        return found


def missing_params(obj: Any, params: Tuple[str, ...]) -> List[str]:
    """The names in `params` that `obj`'s signature does not take."""
    if not params:
        return []
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return [f"has no inspectable signature to check {params} against"]
    names = set(signature.parameters)
    return [f"takes no parameter {name!r}" for name in params if name not in names]


def resolve(target: str) -> Any:
    """The object a dotted path names."""
    owner, attr = _resolve_owner(target)
    if not hasattr(owner, attr):
        raise PatchError(f"{target} does not exist")
    return getattr(owner, attr)


def _resolve_owner(target: str) -> tuple[Any, str]:
    """Import the longest importable module prefix, then walk attributes to the owner."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:-1]:
            if not hasattr(obj, name):
                raise PatchError(f"patch target {target}: {name} does not exist in "
                                 f"{getattr(obj, '__name__', obj)}")
            obj = getattr(obj, name)
        return obj, parts[-1]
    raise PatchError(f"cannot import any module of patch target {target}")


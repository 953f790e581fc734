"""A Megatron base checkpoint with LoRA adapters merged in: W + (alpha / r) * B @ A.

The merge happens in each rank file, before anything is unsharded: a column-parallel shard
holds B's matching output rows and the whole A, a row-parallel shard A's matching input
columns and the whole B, so B_shard @ A_shard has exactly the layout of the weight shard
(fused QKV groups, SwiGLU [gate; up] halves included) and the usual readers take it from
there. Modules the LoRA run trained in full (--lora-modules-to-save) replace the base's.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.megatron_reader import MegatronSource
from modellink.checkpoint.megatron_writer import TRACKER_FILENAME
from modellink.training.lora_args import canonical_targets

_LORA_A = "lora_A.default.weight"
_LORA_B = "lora_B.default.weight"


def _saved(args: Any, name: str, given: Optional[Any], flag: str) -> Any:
    saved = getattr(args, name)
    if given is not None and given != saved:
        raise ConversionError(f"{flag} {given} does not match the adapters, which were "
                              f"trained with {flag} {saved}")
    return saved


class LoraMergedSource(MegatronSource):
    """Reads like the base checkpoint at `root`, with the adapters at `adapters` merged."""

    def __init__(self, root: str, adapters: str, r: Optional[int], alpha: Optional[int],
                 targets: Optional[List[str]]) -> None:
        super().__init__(root)
        if not os.path.isdir(adapters):
            raise ConversionError(f"--lora-load {adapters} does not exist")
        if not os.path.isfile(os.path.join(adapters, TRACKER_FILENAME)):
            raise ConversionError(f"--lora-load {adapters} is not a Megatron checkpoint "
                                  f"(no {TRACKER_FILENAME})")
        self.adapters = MegatronSource(adapters)
        saved = self.adapters.args
        if not getattr(saved, "lora_target_modules", None):
            raise ConversionError(f"--lora-load {adapters} holds no LoRA adapters (it was not "
                                  f"saved by a run with --lora-target-modules)")
        if self.adapters.layout != self.layout:
            raise ConversionError(f"--lora-load {adapters} was saved at another parallel "
                                  f"layout than --load-dir {root}; the LoRA run loads its base "
                                  f"at its own layout, so use that base")
        self.r = _saved(saved, "lora_r", r, "--lora-r")
        self.alpha = _saved(saved, "lora_alpha", alpha, "--lora-alpha")
        given = canonical_targets(targets) if targets else None
        trained = list(saved.lora_target_modules)
        if given is not None and sorted(given) != sorted(trained):
            raise ConversionError(f"--lora-target-modules {' '.join(targets)} does not match "
                                  f"the adapters, which were trained on {' '.join(trained)}")
        self.targets = set(trained)

    def _load_rank(self, tp_rank: int, stage: int, ep_rank: int) -> Dict[str, Any]:
        base = super()._load_rank(tp_rank, stage, ep_rank)
        path = self.adapters._path(tp_rank, stage, ep_rank)
        adapters = self.adapters._load_rank(tp_rank, stage, ep_rank)
        for key, value in base.items():
            if key.startswith("model"):
                if key not in adapters:
                    raise ConversionError(f"{path} has no {key!r} entry")
                self._merge(value, adapters[key], path)
        return base

    @torch.no_grad()
    def _merge(self, base: Dict[str, Any], adapters: Dict[str, Any], path: str) -> None:
        scaling = self.alpha / self.r
        found = set()
        for name, tensor in adapters.items():
            if name.endswith(_LORA_B):
                continue
            if not name.endswith(_LORA_A):  # a module the LoRA run trained in full
                if name not in base or base[name].shape != tensor.shape:
                    raise ConversionError(f"{path}: {name} does not fit the base model")
                base[name] = tensor
                continue
            module = name[:-len(_LORA_A)]
            found.add(module.rstrip(".").rsplit(".", 1)[-1])
            b = adapters.get(module + _LORA_B)
            weight = base.get(module + "weight")
            if b is None or weight is None or tensor.shape[0] != self.r:
                raise ConversionError(f"{path}: adapter {module[:-1]} does not fit the base "
                                      f"model with --lora-r {self.r}")
            merged = weight.float() + scaling * (b.float() @ tensor.float())
            base[module + "weight"] = merged.to(weight.dtype)
        if found != self.targets:
            raise ConversionError(f"{path} holds adapters for {' '.join(sorted(found))}, "
                                  f"expected {' '.join(sorted(self.targets))}")

"""Pick the compute backend (npu > cuda > cpu) and make megatron-core run on it."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from modellink.argument_errors import ArgumentError
from modellink.backend import cuda, npu

DISTRIBUTED_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class Backend:
    device: str  # "npu" | "cuda" | "cpu"

    @property
    def distributed_backend(self) -> str:
        return DISTRIBUTED_BACKENDS[self.device]


def resolve(requested: str = "auto") -> Backend:
    """`--device auto` prefers npu, then cuda, then cpu; an explicit choice must be usable."""
    available = {"npu": npu.is_available, "cuda": cuda.is_available, "cpu": lambda: True}
    if requested == "auto":
        return Backend(next(name for name, probe in available.items() if probe()))
    if requested not in available:
        raise ArgumentError(f"--device must be one of auto, npu, cuda, cpu; got {requested!r}")
    if not available[requested]():
        raise ArgumentError(f"--device {requested} requested but no {requested} device is available")
    return Backend(requested)


def activate(backend: Backend) -> None:
    """Install the backend's redirections and bind this process to its local device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend.device == "npu":
        npu.activate(local_rank)
    elif backend.device == "cuda":
        cuda.activate(local_rank)
    else:
        import megatron.core  # noqa: F401  (see cpu_patches: torch._dynamo must load first)

        from modellink.patches import apply_patches

        apply_patches(group="cpu-backend")
        _set_cpu_threads()


def _set_cpu_threads() -> None:
    # torchrun pins OMP_NUM_THREADS=1 per rank; share the cores among local ranks instead,
    # unless the user chose a count.
    if os.environ.get("MODELLINK_CPU_THREADS"):
        torch.set_num_threads(int(os.environ["MODELLINK_CPU_THREADS"]))
        return
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))

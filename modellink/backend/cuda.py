"""NVIDIA GPU backend: megatron-core's native target, nothing to redirect."""
from __future__ import annotations

import torch


def is_available() -> bool:
    return torch.cuda.is_available()


def activate(local_rank: int) -> None:
    torch.cuda.set_device(local_rank % torch.cuda.device_count())

"""Ascend NPU backend: torch_npu and its CUDA-to-NPU redirection."""
from __future__ import annotations

import importlib.util


def is_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch
    import torch_npu  # noqa: F401  (registers torch.npu)

    return torch.npu.is_available()


def activate(local_rank: int) -> None:
    import torch
    import torch_npu  # noqa: F401
    # transfer_to_npu maps torch.cuda.* and device="cuda" onto the NPU, the Ascend counterpart
    # of our CPU redirection; megatron-core then runs unchanged.
    from torch_npu.contrib import transfer_to_npu  # noqa: F401

    torch.npu.set_device(local_rank)


def enable_jit_compile() -> None:
    """--jit-compile: torch_npu compiles operators just in time for the shapes met instead of
    running its pre-built binary kernels (ModelLink passes this on NPU only)."""
    import torch_npu

    torch_npu.npu.set_compile_mode(jit_compile=True)

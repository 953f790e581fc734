"""`--use-deter-comp`: make two runs with the same flags produce the same bits.

Reductions inside torch.distributed already run in a fixed order for a fixed world and
bucket layout (megatron-core's DDP buckets are built in a fixed parameter order); what varies
is kernel choice inside the device libraries, which this pins down:

- torch: `use_deterministic_algorithms(True)` (an op without a deterministic kernel raises
  instead of silently varying) and cuDNN without autotuning.
- CUDA: cuBLAS needs `CUBLAS_WORKSPACE_CONFIG=:4096:8` before its first call.
- Ascend NPU: HCCL reduces in a fixed order only with `HCCL_DETERMINISTIC=true`, read when the
  communicator is created, so this runs before `init_process_group`.
"""
from __future__ import annotations

import os

import torch


def enable_deterministic_computation() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ["HCCL_DETERMINISTIC"] = "true"
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False

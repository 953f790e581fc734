"""What the device tier (tests/gpu/, run by `bash tests/gpu/run.sh`) runs on and when it skips.

The CPU suite cannot see a device-only mistake (a host tensor handed to NCCL, a CUDA kernel's
rounding); these tests run the same checks on the accelerator. MODELLINK_TIER_DEVICE picks it:
cuda (the default), npu (tests/npu/run.sh), or cpu, which runs the same bodies on CPU ranks over
gloo as a dry run of the tier's logic on a machine without an accelerator. Every tier test
carries the `gpu` marker and skips when the device (or the number of devices) is missing.
"""
from __future__ import annotations

import importlib.util
import os
from typing import List

import pytest
import torch

DEVICE = os.environ.get("MODELLINK_TIER_DEVICE", "cuda")
if DEVICE not in ("cuda", "npu", "cpu"):
    raise ValueError(f"MODELLINK_TIER_DEVICE must be cuda, npu or cpu; got {DEVICE!r}")

# Documented tolerances of half precision against an fp32 reference on O(1) values: a few ulps
# (bf16 keeps 8 significant bits, fp16 11).
TOLERANCE = {
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=4e-3, rtol=4e-3),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
}
# Losses and grad norms of two fp32 runs on the device whose reductions run in another order
# (tensor/pipeline/data parallelism, or the same model on another device).
FP32_RUNS = dict(rel=1e-4)


def device_count() -> int:
    if DEVICE == "cuda":
        return torch.cuda.device_count()
    if DEVICE == "npu":
        if importlib.util.find_spec("torch_npu") is None:
            return 0
        import torch_npu  # noqa: F401  (registers torch.npu)

        return torch.npu.device_count()
    return 2  # the CPU dry run: two gloo ranks stand for two devices


def tier(devices: int = 1) -> List[pytest.MarkDecorator]:
    """`pytestmark` of a tier test module (or `marks` of one test) needing `devices` devices."""
    found = device_count()
    if found == 0:
        reason = f"no GPU ({DEVICE} unavailable)" if DEVICE == "cuda" else f"no {DEVICE} device"
    else:
        reason = f"needs {devices} {DEVICE} devices, this machine has {found}"
    return [pytest.mark.gpu, pytest.mark.skipif(found < devices, reason=reason)]


def on_device(args: List[str], device: str = DEVICE) -> List[str]:
    """Training flags with --device replaced (tests/conftest.py's TINY_LLAMA says cpu)."""
    out = list(args)
    out[out.index("--device") + 1] = device
    return out

"""The predicted-vs-measured memory line at the first log line, in Megatron-LM's
`[Rank R] (after N iterations) memory (MB) | ...` style: the planner's peak for this rank's
pipeline stage next to what the run really reached. On GPU/NPU the measure is the allocator's
max_memory_allocated; on CPU there is no allocator to ask, so it is the growth of the
process's peak resident set since just before the model was built."""
from __future__ import annotations

import argparse
import os
import resource

import torch
from megatron.core import parallel_state

from modellink.models.lora import lora_enabled
from modellink.plan import estimate

MB = 2**20


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryReport:
    """Created before the model is built (the CPU baseline); `line` once after the first
    logged iteration."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.baseline = _resident_bytes() if device == "cpu" else 0
        self.reported = False

    def measured_peak(self) -> int:
        if self.device == "cpu":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
            return max(peak - self.baseline, 0)
        return torch.cuda.max_memory_allocated()  # torch_npu's transfer_to_npu maps it on NPU

    def line(self, args: argparse.Namespace, iteration: int) -> str:
        """This rank's line; the planner does not model LoRA adapters, so those runs show
        the measured peak alone."""
        measured = f"measured peak {self.measured_peak() / MB:.1f}"
        if self.device == "cpu":
            measured += " (RSS growth since model build)"
        fields = [f"[Rank {torch.distributed.get_rank()}] (after {iteration} iterations) "
                  f"memory (MB)"]
        if not lora_enabled(args):
            stage = estimate(args).stages[parallel_state.get_pipeline_model_parallel_rank()]
            fields.append(f"predicted peak {stage.peak / MB:.1f}")
        return " | ".join(fields + [measured])

    def report_once(self, args: argparse.Namespace, iteration: int) -> None:
        """Megatron-LM prints its memory report on data-parallel rank 0 of every model-parallel
        position, once."""
        if self.reported:
            return
        self.reported = True
        if parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0:
            print(self.line(args, iteration), flush=True)

"""`--profile*`: a torch profiler (torch_npu's on NPU) around a window of train iterations.

Iterations are counted as Megatron-LM counts them: the window covers the steps that start at
iteration `--profile-step-start` (0-based: iterations already done) up to, not including,
`--profile-step-end`. Each profiled rank writes `<save-path>/rank<R>.<time>.pt.trace.json`
(Chrome trace format: TensorBoard's profiler plugin, Perfetto, chrome://tracing), plus on CUDA
with `--profile-with-memory` a `rank<R>_memory_snapshot.pickle` for pytorch.org/memory_viz.

Levels on torch's profiler (NPU passes them to torch_npu as Level0/1/2):
level0 operator timeline; level1 adds FLOP estimates; level2 also adds the module hierarchy.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Optional

import torch


def _window(args: argparse.Namespace, profiler_module: Any) -> Any:
    # A schedule (rather than bare start/stop) makes the profiler label each iteration as a
    # `ProfilerStep#N` span, which the trace viewers group by.
    return profiler_module.schedule(wait=0, warmup=0, repeat=1,
                                    active=args.profile_step_end - args.profile_step_start)


def _npu_profiler(args: argparse.Namespace, rank: int) -> Any:
    import torch_npu  # noqa: F401  (only on NPU, where the backend already imported it)

    profiler = torch_npu.profiler
    level = {"level0": profiler.ProfilerLevel.Level0, "level1": profiler.ProfilerLevel.Level1,
             "level2": profiler.ProfilerLevel.Level2}[args.profile_level]
    activities = [profiler.ProfilerActivity.NPU]
    if args.profile_with_cpu:
        activities.append(profiler.ProfilerActivity.CPU)
    return profiler.profile(
        activities=activities,
        record_shapes=args.profile_record_shapes,
        profile_memory=args.profile_with_memory,
        with_stack=args.profile_with_stack,
        experimental_config=profiler._ExperimentalConfig(profiler_level=level),
        schedule=_window(args, profiler),
        on_trace_ready=profiler.tensorboard_trace_handler(args.profile_save_path,
                                                          worker_name=f"rank{rank}"),
    )


def _torch_profiler(args: argparse.Namespace, rank: int) -> Any:
    activity = torch.profiler.ProfilerActivity
    # On the CPU backend the CPU is the device, so its activity is always recorded.
    activities = [activity.CPU] if args.device == "cpu" or args.profile_with_cpu else []
    if args.device == "cuda":
        activities.append(activity.CUDA)
    return torch.profiler.profile(
        activities=activities,
        record_shapes=args.profile_record_shapes,
        profile_memory=args.profile_with_memory,
        with_stack=args.profile_with_stack,
        with_flops=args.profile_level != "level0",
        with_modules=args.profile_level == "level2",
        schedule=_window(args, torch.profiler),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(args.profile_save_path,
                                                                worker_name=f"rank{rank}"),
    )


class StepProfiler:
    """Call `before_step(i)` / `after_step(i)` with the 0-based iteration of each step."""

    def __init__(self, args: argparse.Namespace, rank: int) -> None:
        self._args = args
        self._rank = rank
        self._enabled = args.profile and (-1 in args.profile_ranks or rank in args.profile_ranks)
        self._profiler: Optional[Any] = None
        self._snapshot = self._enabled and args.profile_with_memory and args.device == "cuda"

    def before_step(self, iteration: int) -> None:
        if not self._enabled or iteration != self._args.profile_step_start:
            return
        os.makedirs(self._args.profile_save_path, exist_ok=True)
        make = _npu_profiler if self._args.device == "npu" else _torch_profiler
        self._profiler = make(self._args, self._rank)
        if self._snapshot:
            torch.cuda.memory._record_memory_history(max_entries=100000)
        self._profiler.start()

    def after_step(self, iteration: int) -> None:
        if self._profiler is None:
            return
        self._profiler.step()
        if iteration + 1 >= self._args.profile_step_end:
            self.stop()

    def stop(self) -> None:
        """Ends the window early too (the run stopped inside it), so the trace is written."""
        if self._profiler is None:
            return
        self._profiler.stop()
        self._profiler = None
        if self._snapshot:
            path = os.path.join(self._args.profile_save_path,
                                f"rank{self._rank}_memory_snapshot.pickle")
            torch.cuda.memory._dump_snapshot(path)
            torch.cuda.memory._record_memory_history(enabled=None)
        if self._rank == 0:
            print(f"modellink: profile written to {self._args.profile_save_path}", flush=True)

"""When to stop early: a caught SIGTERM (`--exit-signal-handler`) or `--exit-duration-in-mins`.

As Megatron-LM's DistributedSignalHandler: the signal handler only sets a flag; once per
iteration every rank all-reduces its flags, so all ranks agree on the same iteration to save
a dying-gasp checkpoint and exit, even when the scheduler signalled only some of them.
"""
from __future__ import annotations

import argparse
import signal
import time
from types import FrameType
from typing import Any, Optional

import torch


class ExitMonitor:
    """Owned by the train loop; `install()` before training, `restore()` after."""

    def __init__(self, args: argparse.Namespace, start_time: float) -> None:
        self._handle_signal = args.exit_signal_handler
        self._deadline = (start_time + args.exit_duration_in_mins * 60
                          if args.exit_duration_in_mins else None)
        self._signalled = False
        self._previous_handler: Any = None

    @property
    def active(self) -> bool:
        return self._handle_signal or self._deadline is not None

    def install(self) -> None:
        if self._handle_signal:
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_signal)

    def restore(self) -> None:
        if self._handle_signal:
            signal.signal(signal.SIGTERM, self._previous_handler)

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        self._signalled = True

    def exit_reason(self) -> Optional[str]:
        """Collective over the world when active: the reason all ranks stop now, or None."""
        if not self.active:
            return None
        timed_out = self._deadline is not None and time.time() >= self._deadline
        # On the device: NCCL and HCCL serve the default group and refuse host tensors.
        flags = torch.tensor([int(self._signalled), int(timed_out)], dtype=torch.int32,
                             device=torch.cuda.current_device())
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        signalled, timed_out = flags.tolist()  # one device-to-host copy, not one per flag
        if signalled:
            return "SIGTERM"
        if timed_out:
            return "--exit-duration-in-mins"
        return None

"""Training monitor: TensorBoard (`--tensorboard-dir`) and Weights & Biases (`--wandb-project`).

As Megatron-LM, only the last rank writes (it holds the loss on the last pipeline stage), and
scalars carry Megatron-LM's names so existing dashboards keep working. Both packages are
optional; `parse_args` already refused the flags when the package is missing.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Optional


class TrainingMonitor:
    def __init__(self, args: argparse.Namespace, writes: bool) -> None:
        self._interval = args.tensorboard_log_interval
        self._timers = args.log_timers_to_tensorboard
        self._throughput = args.log_throughput
        self._tensorboard: Optional[Any] = None
        self._wandb: Optional[Any] = None
        if not writes:
            return
        if args.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=args.tensorboard_dir,
                                              max_queue=args.tensorboard_queue_size)
        if args.wandb_project:
            import wandb

            save_dir = args.wandb_save_dir or os.path.join(args.save or ".", "wandb")
            os.makedirs(save_dir, exist_ok=True)
            self._wandb = wandb.init(dir=save_dir, name=args.wandb_exp_name,
                                     project=args.wandb_project, config=vars(args))

    @property
    def active(self) -> bool:
        return self._tensorboard is not None or self._wandb is not None

    def log_iteration(self, iteration: int, scalars: Dict[str, float],
                      throughput: Dict[str, float], timers: Dict[str, float]) -> None:
        """`throughput` is written with --log-throughput, `timers` (seconds, written in ms as
        Megatron-LM's `<name>-time`) with --log-timers-to-tensorboard."""
        if not self.active or iteration % self._interval:
            return
        values = dict(scalars)
        if self._throughput:
            values.update(throughput)
        if self._timers:
            values.update({f"{name}-time": seconds * 1000 for name, seconds in timers.items()})
        self.log_scalars(iteration, values)

    def log_scalars(self, iteration: int, values: Dict[str, float]) -> None:
        if self._tensorboard is not None:
            for name, value in values.items():
                self._tensorboard.add_scalar(name, value, iteration)
        if self._wandb is not None:
            self._wandb.log(values, step=iteration)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

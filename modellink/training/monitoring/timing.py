"""`--timing-log-level` / `--timing-log-option`: Megatron-LM's timer breakdown.

The timers are megatron-core's own `Timers`: its pipeline schedules, gradient finalisation and
optimizer already start and stop them once the model and optimizer configs hold one, and a
timer above the chosen level is its no-op dummy, so an unused level costs nothing. Level 0
measures the iteration time only (the log line's elapsed time per iteration); level 1 adds the
forward-backward pass, the gradient all-reduce, the optimizer step and its phases; level 2
adds forward and backward compute, pipeline sends and receives, and fetching each batch.
Every log interval the last rank prints the level's timers, (min, max) over ranks in ms per
iteration as Megatron-LM does; with --log-timers-to-tensorboard each iteration's values (the
writing rank's) go to TensorBoard as `<name>-time`. Evaluation is not timed, as in Megatron-LM.
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, Dict, Iterator, List, Optional

import torch
from megatron.core.timers import Timers
from megatron.core.utils import get_model_config

# Megatron-LM's timers_to_log, in its order, with the level each is created at.
TIMER_LEVELS: Dict[str, int] = {
    "forward-backward": 1, "forward-compute": 2, "backward-compute": 2, "batch-generator": 2,
    "forward-recv": 2, "forward-send": 2, "backward-recv": 2, "backward-send": 2,
    "forward-send-forward-recv": 2, "forward-send-backward-recv": 2,
    "backward-send-forward-recv": 2, "backward-send-backward-recv": 2,
    "forward-backward-send-forward-backward-recv": 2,
    "non-tensor-parallel-grads-all-reduce": 1, "embedding-grads-all-reduce": 1,
    "all-grads-sync": 1, "params-all-gather": 1, "optimizer-copy-to-main-grad": 1,
    "optimizer-unscale-and-check-inf": 1, "optimizer-clip-main-grad": 1,
    "optimizer-count-zeros": 1, "optimizer-inner-step": 1,
    "optimizer-copy-main-to-model-params": 1, "optimizer": 1,
}


def add_timing_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--timing-log-level", type=int, default=0, choices=[0, 1, 2],
                       help="0: iteration time only; 1: + forward-backward, gradient "
                            "all-reduce and optimizer timers; 2: + forward/backward compute, "
                            "pipeline communication and batch fetching")
    group.add_argument("--timing-log-option", default="minmax", choices=["max", "minmax", "all"],
                       help="how the timers are reported over ranks: the maximum, the minimum "
                            "and maximum, or every rank's")


@contextlib.contextmanager
def timed(model: List[torch.nn.Module], name: str) -> Iterator[None]:
    """Megatron-LM's timer `name` around the block while `Timing` is installed."""
    config = get_model_config(model[0])
    if config.timers is None:
        yield
        return
    timer = config.timers(name, log_level=TIMER_LEVELS[name])
    timer.start(barrier=config.barrier_with_L1_time)
    try:
        yield
    finally:
        timer.stop()


class _TimedIterator:
    """Times each batch fetch as `batch-generator` (a dummy timer below level 2)."""

    def __init__(self, iterator: Iterator, timers: Timers) -> None:
        self._iterator, self._timers = iterator, timers

    def __iter__(self) -> "_TimedIterator":
        return self

    def __next__(self) -> Any:
        timer = self._timers("batch-generator", log_level=TIMER_LEVELS["batch-generator"])
        timer.start()
        try:
            return next(self._iterator)
        finally:
            timer.stop()


class Timing:
    """The run's timers, handed to megatron-core between `install()` and `remove()`."""

    def __init__(self, args: argparse.Namespace, model: List[torch.nn.Module],
                 optimizer: Any) -> None:
        self.timers = Timers(args.timing_log_level, args.timing_log_option)
        self.names = [name for name, level in TIMER_LEVELS.items()
                      if level <= args.timing_log_level]
        self._model_config = get_model_config(model[0])
        optimizers = getattr(optimizer, "chained_optimizers", [optimizer])
        self._configs = [self._model_config] + [o.config for o in optimizers]
        self._active: Dict[str, float] = {}

    def install(self) -> None:
        for config in self._configs:
            config.timers = self.timers

    def remove(self) -> None:
        for config in self._configs:
            config.timers = None

    def timed_iterators(self, iterators: List[Iterator]) -> List[Iterator]:
        return [_TimedIterator(iterator, self.timers) for iterator in iterators]

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._model_config.timers = None
        try:
            yield
        finally:
            self._model_config.timers = self.timers

    def step_seconds(self) -> Dict[str, float]:
        """This rank's seconds per timer since the previous call, for the timers that ran."""
        seconds = {}
        for name in self.names:
            total = self.timers(name, log_level=TIMER_LEVELS[name]).active_time()
            if total > self._active.get(name, 0.0):
                seconds[name] = total - self._active.get(name, 0.0)
            self._active[name] = total
        return seconds

    def report(self, iterations: int) -> Optional[str]:
        """Collective (every rank calls it at each log interval): the level's timers in ms
        per iteration since the last report; None at level 0."""
        if not self.names:
            return None
        return self.timers.get_all_timers_string(self.names, normalizer=iterations)

"""A dying-gasp checkpoint after an exception in the train loop (`--enable-high-availability`).

An exception that leaves a train step before the weight update leaves the model, optimizer
and scheduler as the last completed iteration left them; only the RNG streams have moved on,
so a snapshot taken at the start of each step is what gets saved. The failing ranks meet in
the job's c10d store (never in a collective, since a peer that did not fail is blocked in one):

- every rank failed at the same iteration: all of them are out of their collectives, so they
  save together with the ordinary collective save, then re-raise;
- only some failed (the others stay blocked in a collective with them): a failing rank that
  holds the whole state alone (no model parallelism, and plain DDP or the replica optimizer
  at DP 2) writes the checkpoint with no collective; otherwise nothing is saved.

Which case it is, the first failing rank to stop waiting decides in the store, so every rank
acts on the same answer. An exception during the weight update is never saved over.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional

import torch
from megatron.core import parallel_state

from modellink.training.checkpoint_retention import remove_partial_saves
from modellink.training.checkpointing import (
    MODEL_FILENAME,
    OPTIMIZER_FILENAME,
    iteration_dir,
    model_file_state,
    publish_checkpoint,
    rank_dirname,
    rng_state,
    save_file,
    set_rng_state,
)
from modellink.training.replica import optimizer_files

UPDATE_NOTE = "raised once the optimizer had begun updating the weights"
# How long a failing rank waits for the others to report: at least this, and at least twice
# the longest step so far (ranks that fail at the same step do so within about a step).
_MIN_WAIT_SECONDS = 5.0


def _log(message: str) -> None:
    print(f"modellink: rank {torch.distributed.get_rank()}: {message}", file=sys.stderr,
          flush=True)


def holds_whole_copy(args: argparse.Namespace) -> bool:
    """Whether this rank alone holds everything a checkpoint needs: no model parallelism,
    and the whole optimizer state (plain DDP, or the replica optimizer at DP 2)."""
    if parallel_state.get_model_parallel_group().size() > 1 or args.expert_model_parallel_size > 1:
        return False
    return not args.use_distributed_optimizer or parallel_state.get_data_parallel_group(
        with_context_parallel=True, partial_data_parallel=True).size() == 1


def save_checkpoint_alone(args: argparse.Namespace, iteration: int,
                          model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
                          consumed_train_samples: int, consumed_valid_samples: int,
                          dying_gasp: str) -> str:
    """The checkpoint `save_checkpoint` writes, by one rank that `holds_whole_copy`, with no
    collective over its peers."""
    final_dir = iteration_dir(args.save, iteration)
    tmp_dir = final_dir + ".tmp"
    remove_partial_saves(args.save)
    rank_dir = os.path.join(tmp_dir, rank_dirname(args))
    os.makedirs(rank_dir)
    save_optim = optimizer is not None and not args.no_save_optim
    if save_optim and args.use_distributed_optimizer:
        # Its instance's data-parallel group is itself, so the gather stays local. Both
        # copies are written: the checkpoint keeps its replica.
        files = optimizer_files(rank_dir, OPTIMIZER_FILENAME,
                                args.enable_optimizer_state_local_copy)
        optimizer.save_parameter_state(files[0])
        for path in files:
            if path != files[0]:
                shutil.copyfile(files[0], path)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    state = model_file_state(args, iteration, model, optimizer if save_optim else None,
                             scheduler, consumed_train_samples, consumed_valid_samples,
                             dying_gasp)
    save_file(state, os.path.join(rank_dir, MODEL_FILENAME))
    publish_checkpoint(args, tmp_dir, final_dir, iteration)
    return final_dir


class DyingGasp:
    """Owned by the train loop: `before_step()` / `after_step()` around each step, and
    `on_exception()` when one escapes it (the caller re-raises)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self.active = args.enable_high_availability and args.save is not None
        self._rng: Optional[Dict[str, Any]] = None
        self._step_start = 0.0
        self._longest_step = 0.0
        self._store: Optional[torch.distributed.TCPStore] = None

    def before_step(self) -> None:
        if self.active:
            self._rng = rng_state()
            self._step_start = time.perf_counter()

    def after_step(self) -> None:
        if self.active:
            self._longest_step = max(self._longest_step, time.perf_counter() - self._step_start)

    def on_exception(self, exc: BaseException, state: Any, model: List[torch.nn.Module],
                     optimizer: Any, scheduler: Any, save: Callable[[str], None]) -> None:
        """`state` is the loop's TrainState (the last completed iteration); `save(reason)` is
        the loop's collective save."""
        if not self.active:
            return
        failed_at = state.iteration + 1
        if UPDATE_NOTE in getattr(exc, "__notes__", []):
            _log(f"no dying-gasp checkpoint: iteration {failed_at} failed in or after the "
                 f"weight update")
            return
        if state.iteration in (0, state.last_saved_iteration):
            return  # nothing since the last checkpoint (or the start) to save
        reason = f"exception: {type(exc).__name__}"
        try:
            everyone = self._everyone_failed(failed_at)
        except Exception as store_error:  # the store itself is gone: no way to agree
            _log(f"no dying-gasp checkpoint: cannot reach the job's store ({store_error})")
            return
        set_rng_state(self._rng)
        if everyone:
            save(reason)
            return
        if not holds_whole_copy(self._args):
            _log(f"no dying-gasp checkpoint: iteration {failed_at} failed on only some ranks "
                 f"and this one does not hold the whole model and optimizer state")
            return
        if self._store.add(f"{self._prefix(failed_at)}/saver", 1) == 1:
            save_checkpoint_alone(self._args, state.iteration, model, optimizer, scheduler,
                                  state.consumed_train_samples, state.consumed_valid_samples,
                                  reason)
            state.last_saved_iteration = state.iteration
            _log(f"iteration {failed_at} failed on only some ranks; saved dying-gasp "
                 f"checkpoint ({reason}) at iteration {state.iteration:7d} to "
                 f"{self._args.save} alone")

    def _prefix(self, iteration: int) -> str:
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        return f"modellink/dying_gasp/{run}/{restart}/{iteration}"

    def _everyone_failed(self, iteration: int) -> bool:
        """Report this rank's failure in the store and return the job's common verdict."""
        world = torch.distributed.get_world_size()
        if world == 1:
            return True
        # torchrun's agent hosts the store at MASTER_ADDR:MASTER_PORT, so it outlives any
        # worker; other launchers host it on rank 0, which is then still alive (it failed
        # too, or it is blocked in a collective).
        self._store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=timedelta(seconds=60))
        key = self._prefix(iteration)
        failed = self._store.add(f"{key}/failed", 1)
        deadline = time.time() + max(_MIN_WAIT_SECONDS, 2 * self._longest_step)
        while failed < world and time.time() < deadline:
            time.sleep(0.01)
            failed = self._store.add(f"{key}/failed", 0)
        verdict = self._store.compare_set(f"{key}/verdict", "",
                                          "all" if failed == world else "some")
        return verdict == b"all"

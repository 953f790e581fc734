"""A dying-gasp checkpoint after an exception in the train loop (`--enable-high-availability`).

An exception that leaves a train step before the weight update leaves the model, optimizer
and scheduler as the last completed iteration left them; only the RNG streams have moved on,
so a snapshot taken at the start of each step is what gets saved.

The failing ranks report in the job's store (`dying_gasp_store`), and so do the others: they
are blocked in a collective with a failed rank, but gloo waits with the GIL released, so a
watchdog thread on each rank polls the store during the step and answers for it. On CPU no
rank can begin the weight update before every rank finished its forward/backward (the
gradient reduction and the grad-norm all-reduce need them all), so a rank still before the
update holds the last completed iteration's state. A rank that began it (it failed in the
update, or its step had reached `begin_update`) may have changed its state: it takes no
part. Then, by the common verdict:

- every rank failed before the update: none is inside a collective any more, so all save
  together with the ordinary collective save, then re-raise;
- otherwise: every rank that takes part writes its parts of the checkpoint with no
  collective and the first of them publishes it once all parts are there
  (`dying_gasp_parts`); the failed ranks re-raise and the others end themselves, after
  giving the launcher the time to see a failed rank exit first.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

import torch

from modellink.training import dying_gasp_store as store
from modellink.training.checkpoint_retention import remove_partial_saves
from modellink.training.checkpointing import iteration_dir, rng_state, set_rng_state
from modellink.training.dying_gasp_parts import publish_parts, unsupported, write_parts

UPDATE_NOTE = "raised once the optimizer had begun updating the weights"
# How long the reporting ranks wait for the others: at least this, and at least twice the
# longest step so far (ranks that fail at the same step do so within about a step).
_MIN_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.1
# A rank that did not fail waits this long after the failed ones re-raised before ending
# itself, so that the launcher reports a failed rank's exit, not its own.
_LINGER_SECONDS = 5.0
_STOPPED_EXIT_CODE = 1


def _log(message: str) -> None:
    print(f"modellink: rank {torch.distributed.get_rank()}: {message}", file=sys.stderr,
          flush=True)


class DyingGasp:
    """Owned by the train loop: `before_step()`, `begin_update()` (just before the optimizer
    step) and `after_step()` around each step, `on_exception()` when one escapes it (the
    caller re-raises), and `close()` at the end. `state` is the loop's TrainState."""

    def __init__(self, args: argparse.Namespace, state: Any, model: List[torch.nn.Module],
                 optimizer: Any, scheduler: Any) -> None:
        self._args, self._state = args, state
        self._model, self._optimizer, self._scheduler = model, optimizer, scheduler
        self.active = args.enable_high_availability and args.save is not None
        self._rng: Optional[dict] = None
        self._step_start = 0.0
        self._longest_step = 0.0
        self._lock = threading.Lock()
        # (iteration, "step" | "update" | "done"); which role this rank took, if any.
        self._phase: Tuple[int, str] = (state.iteration, "done")
        self._role: Optional[str] = None
        self._stop = threading.Event()
        self._watchdog: Optional[threading.Thread] = None
        if (self.active and torch.distributed.get_world_size() > 1
                and unsupported(args) is None):
            self._watchdog = threading.Thread(target=self._watch, name="dying-gasp watchdog",
                                              daemon=True)
            self._watchdog.start()

    def before_step(self) -> None:
        if self.active:
            with self._lock:
                self._rng = rng_state()
                self._phase = (self._state.iteration + 1, "step")
            self._step_start = time.perf_counter()

    def begin_update(self) -> None:
        if not self.active:
            return
        with self._lock:
            saving = self._role is not None
            if not saving:
                self._phase = (self._phase[0], "update")
        if saving:  # the watchdog is saving this rank's state: it must not change
            self._watchdog.join()
            raise RuntimeError("stopped before the weight update by a dying gasp")

    def after_step(self) -> None:
        if self.active:
            with self._lock:
                self._phase = (self._phase[0], "done")
            self._longest_step = max(self._longest_step, time.perf_counter() - self._step_start)

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()

    @staticmethod
    def _board(client: torch.distributed.Store, iteration: int) -> store.Board:
        return store.Board(client, iteration, torch.distributed.get_rank(),
                           torch.distributed.get_world_size())

    def _wait_seconds(self) -> float:
        return max(_MIN_WAIT_SECONDS, 2 * self._longest_step)

    def on_exception(self, exc: BaseException, save: Callable[[str], None]) -> None:
        """`save(reason)` is the loop's collective save."""
        if not self.active:
            return
        with self._lock:
            taken = self._role
            if taken is None:
                updating = UPDATE_NOTE in getattr(exc, "__notes__", [])
                self._role = store.UPDATING if updating else store.FAILED
        if taken is not None:  # the watchdog answers for this rank; it ends the process
            self._watchdog.join()
            return
        failed_at = self._state.iteration + 1
        if self._role == store.UPDATING:
            _log(f"iteration {failed_at} failed in or after the weight update: this rank's "
                 f"state goes into no dying-gasp checkpoint")
        elif self._state.iteration in (0, self._state.last_saved_iteration):
            return  # nothing since the last checkpoint (or the start) to save
        reason = f"exception: {type(exc).__name__}"
        if torch.distributed.get_world_size() == 1:
            if self._role == store.FAILED:
                set_rng_state(self._rng)
                save(reason)
            return
        try:
            board = self._board(store.connect(), failed_at)
            board.report(self._role, reason)
            verdict = board.agree(self._wait_seconds())
        except Exception as store_error:  # the store itself is gone: no way to agree
            _log(f"no dying-gasp checkpoint: cannot reach the job's store ({store_error})")
            return
        if verdict.kind == "all":
            set_rng_state(self._rng)
            save(reason)
            return
        if verdict.kind == "parts" and board.rank in verdict.alive:
            self._save_parts(board, verdict)
        board.count("released", 1)

    def _watch(self) -> None:
        """The watchdog thread: answer for this rank when another one fails in its step."""
        try:
            client = store.connect()
        except Exception as exc:
            _log(f"dying-gasp watchdog not started: cannot reach the job's store ({exc})")
            return
        while not self._stop.wait(_POLL_SECONDS):
            with self._lock:
                if self._role is not None:
                    return  # this rank failed itself: its main thread reports
                iteration, phase = self._phase
            if phase == "done":
                iteration += 1  # a failure in the next step, announced before it began here
            board = self._board(client, iteration)
            try:
                if not board.announced():
                    continue
            except Exception as exc:  # the store is gone: the job is ending anyway
                _log(f"dying-gasp watchdog stopped: the job's store failed ({exc})")
                return
            with self._lock:
                if self._role is not None or self._phase[0] != iteration:
                    continue
                if self._phase[1] == "done":
                    continue  # between steps: the next one starts soon, answer then
                self._role = store.SURVIVOR if self._phase[1] == "step" else store.UPDATING
            self._answer(board)

    def _answer(self, board: store.Board) -> None:
        """Take part for this rank, whose main thread is blocked in a collective, then end
        the process."""
        try:
            board.report(self._role)
            if self._role == store.UPDATING:
                _log(f"had begun the weight update of iteration {self._phase[0]} when "
                     f"another rank failed in it: its state goes into no dying-gasp checkpoint")
            verdict = board.agree(self._wait_seconds())
            if verdict.kind == "parts" and board.rank in verdict.alive:
                self._save_parts(board, verdict)
            # Let a failed rank exit first, so that it is the failure the launcher reports.
            board.wait_count("released", len(verdict.failed), self._parts_timeout())
            time.sleep(_LINGER_SECONDS)
            _log(f"stopping: rank(s) {verdict.failed} failed in iteration "
                 f"{self._state.iteration + 1}")
        except Exception as exc:
            _log(f"dying gasp failed: {type(exc).__name__}: {exc}")
        os._exit(_STOPPED_EXIT_CODE)

    def _parts_timeout(self) -> float:
        # Writing one's parts takes about as long as one's share of a collective save.
        return self._args.distributed_timeout_minutes * 60.0

    def _save_parts(self, board: store.Board, verdict: store.Verdict) -> None:
        """Write this rank's parts; the first rank that takes part publishes the checkpoint.
        Returns once the outcome is known."""
        args, state = self._args, self._state
        failed_at = state.iteration + 1
        why_not = unsupported(args)
        if why_not is not None:
            if board.rank == verdict.alive[0]:
                _log(f"no dying-gasp checkpoint: iteration {failed_at} failed on only some "
                     f"ranks, and saving without a collective does not support {why_not}")
            return
        start = time.perf_counter()
        final_dir = iteration_dir(args.save, state.iteration)
        tmp_dir = final_dir + ".tmp"
        publisher = board.rank == verdict.alive[0]
        status = "ok"
        try:
            if publisher:
                self._make_tmp_dir(board, tmp_dir)
            trouble = board.wait_for("tmp", self._parts_timeout())
            if trouble is None or trouble:
                raise RuntimeError(f"rank {verdict.alive[0]} did not create {tmp_dir}: "
                                   f"{trouble or 'timed out'}")
            write_parts(args, tmp_dir, set(verdict.alive), state.iteration, self._model,
                        self._optimizer, self._scheduler, state.consumed_train_samples,
                        state.consumed_valid_samples, self._rng, verdict.reason)
        except Exception as exc:
            status = f"{type(exc).__name__}: {exc}"
            _log(f"could not write its part of the dying-gasp checkpoint: {status}")
        board.wrote(status)
        if publisher:
            board.signal("outcome", self._publish(board, verdict, tmp_dir, final_dir, start))
        outcome = board.wait_for("outcome", 2 * self._parts_timeout())
        if outcome == "published" and board.rank in verdict.failed:
            state.last_saved_iteration = state.iteration

    def _make_tmp_dir(self, board: store.Board, tmp_dir: str) -> None:
        """Signal "tmp" to the others: empty once `tmp_dir` exists, else what went wrong."""
        try:
            remove_partial_saves(self._args.save)
            os.makedirs(tmp_dir)
        except OSError as exc:
            board.signal("tmp", f"{type(exc).__name__}: {exc}")
            raise
        board.signal("tmp")

    def _publish(self, board: store.Board, verdict: store.Verdict, tmp_dir: str,
                 final_dir: str, start: float) -> str:
        args, state = self._args, self._state
        board.wait_count("written", len(verdict.alive), self._parts_timeout())
        errors = board.write_errors(verdict.alive)
        try:
            missing = publish_parts(args, tmp_dir, final_dir, state.iteration)
        except Exception as exc:
            _log(f"no dying-gasp checkpoint: publishing it failed: {type(exc).__name__}: {exc}")
            return "failed"
        if missing:
            _log(f"no dying-gasp checkpoint: iteration {state.iteration + 1} failed on only "
                 f"some ranks and parts are missing: {', '.join(missing)}"
                 + (f" (ranks {errors})" if errors else "") + "; nothing published")
            return "missing"
        _log(f"iteration {state.iteration + 1} failed on only some ranks; saved dying-gasp "
             f"checkpoint ({verdict.reason}) at iteration {state.iteration:7d} to {args.save} "
             f"from the parts of ranks {verdict.alive} (failed: {verdict.failed}) in "
             f"{time.perf_counter() - start:.2f} s")
        return "published"

"""A dying-gasp checkpoint when a rank fails or dies (`--enable-high-availability`).

An exception that leaves a train step before the weight update leaves the model, optimizer
and scheduler as the last completed iteration left them; only the RNG streams have moved on,
so a snapshot taken at the start of each step (and again once its update is done) is what
gets saved: the state of the last completed iteration this rank holds.

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

A rank killed outright (SIGKILL, OOM killer) reports nothing, but torchrun then sends SIGTERM
to the other workers and waits 30 s before killing them. The SIGTERM handler itself does
nothing (so that the process lives on); the signal wakes the watchdog through the wakeup fd,
even while the main thread is blocked in a collective with the dead rank, and the watchdog
takes part as above for every rank that got the signal, in the same store keys. With the
replica optimizer the dead rank's optimizer shard has a copy on a survivor, so the
checkpoint is whole and at most the step in flight is lost.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from megatron.core.num_microbatches_calculator import get_current_global_batch_size

from modellink.training.ha import dying_gasp_store as store
from modellink.training.checkpoint.retention import remove_partial_saves
from modellink.training.checkpoint.checkpointing import iteration_dir, rng_state, set_rng_state
from modellink.training.ha.dying_gasp_parts import publish_parts, unsupported, write_parts

UPDATE_NOTE = "raised once the optimizer had begun updating the weights"
# How long the reporting ranks wait for the others: at least this, and at least twice the
# longest step so far (ranks that fail at the same step do so within about a step).
_MIN_WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.1
# A rank that did not fail waits this long after the failed ones re-raised before ending
# itself, so that the launcher reports a failed rank's exit, not its own.
_LINGER_SECONDS = 5.0
_STOPPED_EXIT_CODE = 1
# After SIGTERM: how long to wait for an update in flight to finish and for the other ranks
# that got the signal to report (torchrun signals its workers within milliseconds), out of
# torchrun's 30 s before SIGKILL.
_SIGNAL_WAIT_SECONDS = 2.0


def _log(message: str) -> None:
    print(f"modellink: rank {torch.distributed.get_rank()}: {message}", file=sys.stderr,
          flush=True)


@dataclass(frozen=True)
class _Held:
    """The completed iteration whose state the model and optimizer hold, as its checkpoint
    records it."""
    iteration: int
    consumed_train_samples: int
    consumed_valid_samples: int
    rng: Optional[dict]


class DyingGasp:
    """Owned by the train loop: `before_step()`, `begin_update()` and `end_update()` (just
    before and after the optimizer and scheduler steps) and `after_step()` around each step,
    `on_exception()` when one escapes it (the caller re-raises), and `close()` at the end.
    `state` is the loop's TrainState."""

    def __init__(self, args: argparse.Namespace, state: Any, model: List[torch.nn.Module],
                 optimizer: Any, scheduler: Any) -> None:
        self._args, self._state = args, state
        self._model, self._optimizer, self._scheduler = model, optimizer, scheduler
        self.active = args.enable_high_availability and args.save is not None
        self._held = _Held(state.iteration, state.consumed_train_samples,
                           state.consumed_valid_samples, rng_state() if self.active else None)
        self._step_start = 0.0
        self._longest_step = 0.0
        self._incident_start = 0.0
        self._lock = threading.Lock()
        # (iteration, "step" | "update" | "updated" | "done"); which role this rank took.
        self._phase: Tuple[int, str] = (state.iteration, "done")
        self._role: Optional[str] = None
        self._stop = threading.Event()
        self._watchdog: Optional[threading.Thread] = None
        self._wakeup: Optional[Tuple[int, int]] = None  # the signal wakeup pipe (read, write)
        self._previous: Tuple[Any, int] = (None, -1)  # SIGTERM handler and wakeup fd before us
        if (self.active and torch.distributed.get_world_size() > 1
                and unsupported(args) is None):
            # --exit-signal-handler keeps SIGTERM's Megatron-LM meaning (a collective save at
            # the end of the iteration); signal handlers can only be set on the main thread.
            if (not args.exit_signal_handler
                    and threading.current_thread() is threading.main_thread()):
                self._catch_sigterm()
            self._watchdog = threading.Thread(target=self._watch, name="dying-gasp watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _catch_sigterm(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._wakeup = (read_fd, write_fd)
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._previous = (signal.signal(signal.SIGTERM, _keep_running), previous_fd)

    def _park(self) -> None:
        """The main thread stops here for good: the watchdog is saving this rank's state and
        ends the process."""
        self._watchdog.join()

    def before_step(self) -> None:
        if self.active:
            with self._lock:
                state = self._state
                self._held = _Held(state.iteration, state.consumed_train_samples,
                                   state.consumed_valid_samples, rng_state())
                self._phase = (state.iteration + 1, "step")
                stopping = self._role is not None
            if stopping:
                self._park()
            self._step_start = time.perf_counter()

    def begin_update(self) -> None:
        if not self.active:
            return
        with self._lock:
            saving = self._role is not None
            if not saving:
                self._phase = (self._phase[0], "update")
        if saving:  # the watchdog is saving this rank's state: it must not change
            self._park()
            raise RuntimeError("stopped before the weight update by a dying gasp")

    def end_update(self) -> None:
        """The optimizer and scheduler stepped: this rank holds the iteration in flight."""
        if not self.active:
            return
        with self._lock:
            held = self._held
            self._held = _Held(self._phase[0],
                               held.consumed_train_samples + get_current_global_batch_size(),
                               held.consumed_valid_samples, rng_state())
            self._phase = (self._phase[0], "updated")
            stopping = self._role is not None
        if stopping:
            self._park()

    def after_step(self) -> None:
        if self.active:
            with self._lock:
                self._phase = (self._phase[0], "done")
            self._longest_step = max(self._longest_step, time.perf_counter() - self._step_start)

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join()
        if self._wakeup is not None:
            handler, wakeup_fd = self._previous
            signal.signal(signal.SIGTERM, handler)
            signal.set_wakeup_fd(wakeup_fd)
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None

    @staticmethod
    def _board(client: torch.distributed.Store) -> store.Board:
        return store.Board(client, torch.distributed.get_rank(),
                           torch.distributed.get_world_size())

    def _adopt(self, held: _Held) -> None:
        """Make the loop's state (and the RNG) that of `held`, for the collective save."""
        state = self._state
        state.iteration = held.iteration
        state.consumed_train_samples = held.consumed_train_samples
        state.consumed_valid_samples = held.consumed_valid_samples
        set_rng_state(held.rng)

    def _wait_seconds(self) -> float:
        return max(_MIN_WAIT_SECONDS, 2 * self._longest_step)

    def on_exception(self, exc: BaseException, save: Callable[[str], None]) -> None:
        """`save(reason)` is the loop's collective save."""
        if not self.active:
            return
        with self._lock:
            taken = self._role
            if taken is None:
                # An exception after the update (in the loss all-reduce with a lost peer)
                # leaves the updated state whole; one during it (UPDATE_NOTE) does not.
                updating = self._phase[1] == "update"
                self._role = store.UPDATING if updating else store.FAILED
                self._incident_start = time.perf_counter()
            held, failed_at = self._held, self._phase[0]
        if taken is not None:  # the watchdog answers for this rank; it ends the process
            self._park()
            return
        if self._role == store.UPDATING:
            _log(f"iteration {failed_at} failed in the weight update ({UPDATE_NOTE}): this "
                 f"rank's state goes into no dying-gasp checkpoint")
        elif held.iteration in (0, self._state.last_saved_iteration):
            return  # nothing since the last checkpoint (or the start) to save
        reason = f"exception: {type(exc).__name__}"
        if torch.distributed.get_world_size() == 1:
            if self._role == store.FAILED:
                self._adopt(held)
                save(reason)
            return
        try:
            board = self._board(store.connect())
            board.report(self._role, held.iteration, reason)
            verdict = board.agree(self._wait_seconds())
        except Exception as store_error:  # the store itself is gone: no way to agree
            _log(f"no dying-gasp checkpoint: cannot reach the job's store ({store_error})")
            return
        if verdict.kind == "all":
            self._adopt(held)
            save(reason)
            return
        if board.rank in verdict.alive:
            self._save_parts(board, verdict, held)
        board.count("released", 1)

    def _watch(self) -> None:
        """The watchdog thread: answer for this rank when another one reports a failure, or
        when SIGTERM arrives."""
        try:
            client = store.connect()
        except Exception as exc:
            _log(f"dying-gasp watchdog not started: cannot reach the job's store ({exc})")
            return
        board = self._board(client)
        while not self._stop.is_set():
            if self._signalled():
                self._on_sigterm(board)
                return
            try:
                if not board.announced():
                    continue
            except Exception as exc:  # the store is gone: the job is ending anyway
                _log(f"dying-gasp watchdog stopped: the job's store failed ({exc})")
                return
            with self._lock:
                if self._role is not None:
                    return  # this rank failed itself: its main thread reports
                # A rank in the update may change its state; the others hold theirs (the
                # main thread parks at the next step boundary).
                self._role = store.UPDATING if self._phase[1] == "update" else store.SURVIVOR
                self._incident_start = time.perf_counter()
                held = self._held
            self._answer(board, held, "", self._wait_seconds())

    def _signalled(self) -> bool:
        """Wait up to a poll; whether SIGTERM arrived meanwhile."""
        if self._wakeup is None:
            self._stop.wait(_POLL_SECONDS)
            return False
        ready, _, _ = select.select([self._wakeup[0]], [], [], _POLL_SECONDS)
        return bool(ready) and signal.SIGTERM in os.read(self._wakeup[0], 64)

    def _on_sigterm(self, board: store.Board) -> None:
        """The launcher stops this rank (after another worker died, or for the scheduler):
        save the last completed iteration it holds, with the others that got the signal."""
        with self._lock:
            if self._role is not None:
                return  # this rank already answers for an exception; the handler kept it alive
            self._role = store.SURVIVOR
            self._incident_start = time.perf_counter()
        deadline = time.perf_counter() + _SIGNAL_WAIT_SECONDS
        while self._phase[1] == "update" and time.perf_counter() < deadline:
            time.sleep(_POLL_SECONDS / 10)  # end_update() parks the main thread
        with self._lock:
            if self._phase[1] == "update":
                self._role = store.UPDATING
            held = self._held
        self._answer(board, held, "SIGTERM", _SIGNAL_WAIT_SECONDS)

    def _answer(self, board: store.Board, held: _Held, reason: str, wait_seconds: float
                ) -> None:
        """Take part for this rank, whose main thread is parked or blocked in a collective,
        then end the process."""
        try:
            board.report(self._role, held.iteration, reason)
            if self._role == store.UPDATING:
                _log(f"was in the weight update of iteration {self._phase[0]}: its state goes "
                     f"into no dying-gasp checkpoint")
            verdict = board.agree(wait_seconds)
            if board.rank in verdict.alive:
                self._save_parts(board, verdict, held)
            if verdict.failed:
                # Let a failed rank exit first, so that it is the failure the launcher reports.
                board.wait_count("released", len(verdict.failed), self._parts_timeout())
                self._linger()
                _log(f"stopping: rank(s) {verdict.failed} failed in iteration "
                     f"{verdict.iteration + 1}")
        except Exception as exc:
            _log(f"dying gasp failed: {type(exc).__name__}: {exc}")
        os._exit(_STOPPED_EXIT_CODE)

    def _linger(self) -> None:
        """Up to _LINGER_SECONDS, cut short by the launcher's SIGTERM."""
        deadline = time.perf_counter() + _LINGER_SECONDS
        while time.perf_counter() < deadline and not self._signalled():
            pass

    def _parts_timeout(self) -> float:
        # Writing one's parts takes about as long as one's share of a collective save.
        return self._args.distributed_timeout_minutes * 60.0

    def _save_parts(self, board: store.Board, verdict: store.Verdict, held: _Held) -> None:
        """Write this rank's parts of `held` (the verdict's iteration); the first rank that
        takes part publishes the checkpoint. Returns once the outcome is known."""
        args, state = self._args, self._state
        why_not = unsupported(args)
        if why_not is not None:
            if board.rank == verdict.alive[0]:
                _log(f"no dying-gasp checkpoint: iteration {verdict.iteration + 1} failed on "
                     f"only some ranks, and saving without a collective does not support "
                     f"{why_not}")
            return
        if held.iteration in (0, state.last_saved_iteration):
            return  # nothing since the last checkpoint (or the start) to save
        start = time.perf_counter()
        final_dir = iteration_dir(args.save, held.iteration)
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
            write_parts(args, tmp_dir, set(verdict.alive), held.iteration, self._model,
                        self._optimizer, self._scheduler, held.consumed_train_samples,
                        held.consumed_valid_samples, held.rng, verdict.reason)
        except Exception as exc:
            status = f"{type(exc).__name__}: {exc}"
            _log(f"could not write its part of the dying-gasp checkpoint: {status}")
        board.wrote(status)
        if publisher:
            board.signal("outcome", self._publish(board, verdict, tmp_dir, final_dir, start))
        outcome = board.wait_for("outcome", 2 * self._parts_timeout())
        if outcome == "published" and board.rank in verdict.failed:
            state.last_saved_iteration = held.iteration

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
        args, iteration = self._args, verdict.iteration
        what = (f"iteration {iteration + 1} failed on only some ranks" if verdict.failed
                else "stopped by SIGTERM")
        board.wait_count("written", len(verdict.alive), self._parts_timeout())
        errors = board.write_errors(verdict.alive)
        try:
            missing = publish_parts(args, tmp_dir, final_dir, iteration)
        except Exception as exc:
            _log(f"no dying-gasp checkpoint: publishing it failed: {type(exc).__name__}: {exc}")
            return "failed"
        if missing:
            _log(f"no dying-gasp checkpoint: {what} and parts are missing: "
                 f"{', '.join(missing)}" + (f" (ranks {errors})" if errors else "")
                 + "; nothing published")
            return "missing"
        now = time.perf_counter()
        _log(f"{what}; saved dying-gasp checkpoint ({verdict.reason}) at iteration "
             f"{iteration:7d} to {args.save} from the parts of ranks {verdict.alive} (failed: "
             f"{verdict.failed}) in {now - start:.2f} s, {now - self._incident_start:.2f} s "
             f"after this rank learnt of the failure")
        return "published"


def _keep_running(signum: int, frame: Any) -> None:
    """SIGTERM's handler: its only job is that the signal no longer ends the process at once
    (the watchdog, woken through the wakeup fd, saves and ends it)."""

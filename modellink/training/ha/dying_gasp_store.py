"""Where the ranks of a dying gasp meet: the job's c10d store, never a collective (the peers
of a failed rank are blocked in one with it).

Every path into a dying gasp ends the process, so a job attempt has at most one, and its
keys live under `modellink/dying_gasp/<run>/<restart>/`: each rank that answers writes
`role/<rank>` (with the iteration whose state it holds) and counts itself in `reported`; the
first one to stop waiting records the `verdict`, which every rank then follows. After it: `tmp`
(the publisher made the directory), `written` and `wrote/<rank>` (ranks done writing their
parts), `outcome` (what the publisher did) and `released` (failed ranks about to re-raise).
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Dict, List, Optional, Tuple

import torch

FAILED, SURVIVOR, UPDATING = "failed", "survivor", "updating"
_POLL_SECONDS = 0.02


def connect(timeout_seconds: float = 60.0) -> torch.distributed.TCPStore:
    """A client of the job's store. torchrun's agent hosts it at MASTER_ADDR:MASTER_PORT, so
    it outlives any worker; other launchers host it on rank 0, which is then still alive
    (it failed too, or it is blocked in a collective)."""
    return torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                      is_master=False, timeout=timedelta(seconds=timeout_seconds))


@dataclass
class Verdict:
    kind: str  # "all" (every rank failed before the update: collective save) or "parts"
    alive: List[int]  # the ranks that take part (hold `iteration`), each writing its share
    failed: List[int]
    reason: str  # what the model files record as `dying_gasp`
    iteration: int  # the completed iteration that is saved


class Board:
    """The keys of this job attempt's dying gasp, for this rank."""

    def __init__(self, store: torch.distributed.Store, rank: int, world: int) -> None:
        run = os.environ.get("TORCHELASTIC_RUN_ID", "")
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        self._store = store
        self._prefix = f"modellink/dying_gasp/{run}/{restart}"
        self.rank, self.world = rank, world

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def announced(self) -> bool:
        """Whether any rank reported."""
        return self._store.check([self._key("reported")])

    def report(self, role: str, iteration: int, reason: str = "") -> None:
        """`iteration`: the completed iteration whose state this rank holds (ignored when
        `role` is UPDATING)."""
        self._store.set(self._key(f"role/{self.rank}"), json.dumps([role, reason, iteration]))
        self._store.add(self._key("reported"), 1)

    def agree(self, wait_seconds: float) -> Verdict:
        """The job's verdict: decided here once every rank reported or `wait_seconds` have
        passed, unless another rank decided already."""
        deadline = time.time() + wait_seconds
        while (self._store.add(self._key("reported"), 0) < self.world
               and time.time() < deadline and not self._store.check([self._key("verdict")])):
            time.sleep(_POLL_SECONDS)
        verdict = self._key("verdict")
        if not self._store.check([verdict]):
            self._store.compare_set(verdict, "", json.dumps(self._verdict().__dict__))
        return Verdict(**json.loads(self._store.get(verdict)))

    def _verdict(self) -> Verdict:
        roles: Dict[int, Tuple[str, str, int]] = {}
        for rank in range(self.world):
            key = self._key(f"role/{rank}")
            if self._store.check([key]):
                roles[rank] = tuple(json.loads(self._store.get(key)))
        failed = sorted(rank for rank, (role, _, _) in roles.items() if role == FAILED)
        # A rank that began the update may have changed its state: it does not take part.
        # The others may hold different iterations (some finished the update of the step in
        # flight, some did not): the iteration most of them hold is saved, the later on a tie.
        held = Counter(it for role, _, it in roles.values() if role != UPDATING)
        iteration = max(held, key=lambda it: (held[it], it)) if held else -1
        alive = sorted(rank for rank, (role, _, it) in roles.items()
                       if role != UPDATING and it == iteration)
        reason = next((roles[rank][1] for rank in failed), "") or next(
            (reason for _, reason, _ in roles.values() if reason), "")
        kind = "all" if len(failed) == self.world == len(alive) else "parts"
        return Verdict(kind, alive, failed, reason, iteration)

    def signal(self, name: str, value: str = "") -> None:
        self._store.set(self._key(name), value)

    def wait_for(self, name: str, seconds: float) -> Optional[str]:
        """The value of `name` once it is set, or None after `seconds`."""
        deadline = time.time() + seconds
        while not self._store.check([self._key(name)]):
            if time.time() >= deadline:
                return None
            time.sleep(_POLL_SECONDS)
        return self._store.get(self._key(name)).decode()

    def count(self, name: str, increment: int = 0) -> int:
        return self._store.add(self._key(name), increment)

    def wait_count(self, name: str, target: int, seconds: float) -> int:
        deadline = time.time() + seconds
        while (value := self.count(name)) < target and time.time() < deadline:
            time.sleep(_POLL_SECONDS)
        return value

    def wrote(self, status: str) -> None:
        """This rank is done writing its parts: "ok" or what went wrong."""
        self.signal(f"wrote/{self.rank}", status)
        self.count("written", 1)

    def write_errors(self, ranks: List[int]) -> Dict[int, str]:
        """What went wrong on those of `ranks` that reported trouble (or nothing yet)."""
        errors = {}
        for rank in ranks:
            key = self._key(f"wrote/{rank}")
            status = self._store.get(key).decode() if self._store.check([key]) else "no report"
            if status != "ok":
                errors[rank] = status
        return errors

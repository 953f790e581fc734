"""How a failure reaches the user, from whichever rank it happens on.

A `UserError` (a bad flag, file, checkpoint or data record) prints one `error: ...` line and
exits with status 2; anything else is a bug or an environment failure and keeps its
traceback. In a job of several ranks every line starts with `rank N: `, and a failing rank
records itself in the job's store (the one the dying gasp uses). Its peers are blocked in a
collective with it, which then fails with a connection error: they find the record and
print one line naming the failed rank instead of their own gloo traceback.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch

from modellink.training.ha import dying_gasp_store
from modellink.user_error import UserError

USER_ERROR_STATUS = 2
FAILURE_STATUS = 1
# What gloo says when a peer's process went away or stopped answering.
_PEER_LOSS = ("Connection closed by peer", "Connection reset by peer", "Timed out waiting")
# A failed rank tears its process groups down before it reaches `run_cli` to record itself,
# so its peers' collectives can fail first: they wait this long for the record.
_RECORD_WAIT_SECONDS = 3.0
_POLL_SECONDS = 0.02
_STORE_TIMEOUT_SECONDS = 5.0


def run_cli(main: Callable[[], Any]) -> int:
    """Run an entry point and return its exit status. A single process (no WORLD_SIZE > 1)
    lets an exception that is not a user error propagate as Python would."""
    try:
        main()
    except UserError as exc:
        _record_failure()
        _print(f"error: {exc}")
        return USER_ERROR_STATUS
    except Exception as exc:
        if _world_size() <= 1:
            raise
        failed = _failed_peer() if _is_peer_loss(exc) else None
        if failed is None:
            _record_failure()
            _print("".join(traceback.format_exception(exc)).rstrip("\n"))
        else:
            _print(f"stopped: rank {failed} failed (see its error above)")
        return FAILURE_STATUS
    return 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _print(text: str) -> None:
    """`text` on stderr in one write, each line prefixed with the rank in a multi-rank job."""
    if _world_size() > 1:
        prefix = f"rank {os.environ.get('RANK', '?')}: "
        text = "\n".join(prefix + line for line in text.split("\n"))
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _is_peer_loss(exc: BaseException) -> bool:
    return isinstance(exc, torch.distributed.DistError) or (
        isinstance(exc, RuntimeError) and any(phrase in str(exc) for phrase in _PEER_LOSS))


def _key() -> str:
    run = os.environ.get("TORCHELASTIC_RUN_ID", "")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"modellink/failed_rank/{run}/{restart}"


def _store() -> Optional[torch.distributed.Store]:
    if _world_size() <= 1 or "MASTER_ADDR" not in os.environ:
        return None
    try:
        return dying_gasp_store.connect(_STORE_TIMEOUT_SECONDS)
    except Exception:  # no store to meet in: each rank reports only for itself
        return None


def _record_failure() -> None:
    """Name this rank as the job's failed one, unless another rank was first."""
    store = _store()
    if store is not None:
        try:
            store.compare_set(_key(), "", os.environ.get("RANK", "?"))
        except Exception:  # the store went away with the job: nothing to tell the peers
            pass


def _failed_peer() -> Optional[str]:
    """The rank that recorded its failure, once it has, or None if none does so in time."""
    store = _store()
    if store is None:
        return None
    deadline = time.monotonic() + _RECORD_WAIT_SECONDS
    try:
        while not store.check([_key()]):
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_SECONDS)
        return store.get(_key()).decode()
    except Exception:  # the store went away with the job: report this rank's own error
        return None

"""User-facing failure: bad flags, data or checkpoints end in one line, not a traceback."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

from modellink.arguments import ArgumentError
from modellink.training.checkpointing import CheckpointError
from modellink.training.data import DataError

USER_ERRORS = (ArgumentError, CheckpointError, DataError, FileNotFoundError, ValueError)


def run_cli(main: Callable[[], Any]) -> int:
    """Run an entry point; user errors print `error: <message>` once and exit with status 2."""
    try:
        main()
    except USER_ERRORS as exc:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0

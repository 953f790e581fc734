"""Which iteration directories exist under a checkpoint root, and keep-last-N pruning."""
from __future__ import annotations

import os
import re
import shutil
from typing import List

_ITERATION_DIR = re.compile(r"^iter_(\d{7})$")  # no suffix: `.tmp` / `.old` are never complete
_PARTIAL_DIR = re.compile(r"^iter_\d{7}\.tmp$")


def saved_iterations(root: str) -> List[int]:
    """Iterations with a complete (renamed into place) directory, newest first."""
    if not os.path.isdir(root):
        return []
    found = (_ITERATION_DIR.match(name) for name in os.listdir(root))
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def prune_checkpoints(root: str, keep: int, latest: int) -> List[int]:
    """Delete all but the newest `keep` iteration directories; never the tracker's `latest`.
    Returns the iterations deleted. Called by one rank after the tracker is updated, so a
    crash mid-prune only leaves extra old directories behind."""
    doomed = [it for it in saved_iterations(root)[keep:] if it != latest]
    for iteration in doomed:
        shutil.rmtree(os.path.join(root, f"iter_{iteration:07d}"), ignore_errors=True)
    return doomed


def remove_partial_saves(root: str) -> None:
    """Delete what saves that crashed left behind. Saves are collective and one at a time, so
    when a new one starts nothing else is writing there."""
    if os.path.isdir(root):
        for name in os.listdir(root):
            if _PARTIAL_DIR.match(name):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)

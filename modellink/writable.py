"""Is an output folder writable? Asked at start-up by every entry point that writes (checkpoint
`--save`, dataset cache, converter `--save-dir`, preprocessing `--output-prefix`), so that a
typo or a read-only mount is reported before hours of work rather than at the first save.

The folder itself is not created here: a run that fails later must not leave an empty one.
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional


def writable_dir_problem(path: str) -> Optional[str]:
    """Why files cannot be written in folder `path` (created if missing), or None if they can.

    The nearest existing ancestor is probed with an unnamed temporary file, since permission
    bits alone say nothing for root or for read-only and full file systems."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} exists and is not a directory"
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is a file, so {path} cannot be created"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing}: {exc.strerror}"
    return None

"""The output directory appears whole or not at all: write into a sibling temporary directory,
rename it into place at the end; a failure removes the temporary directory."""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

from modellink.checkpoint.errors import ConversionError
from modellink.writable import writable_dir_problem


def _nested(inner: str, outer: str) -> bool:
    return os.path.commonpath([inner, outer]) == outer


def check_save_dir(save_dir: str, inputs: Dict[str, Optional[str]], overwrite: bool) -> None:
    """Refuse a --save-dir that would replace, or be replaced with, anything the conversion
    reads (`inputs`: flag -> path), whatever symlinks lead there: --overwrite deletes the old
    --save-dir only after the new one is written, which must not take the source with it."""
    save = os.path.realpath(save_dir)
    for flag, path in inputs.items():
        if path is None:
            continue
        source = os.path.realpath(path)
        if save == source:
            raise ConversionError(f"--save-dir {save_dir} is {flag} {path}; choose another folder")
        if _nested(source, save):
            raise ConversionError(f"--save-dir {save_dir} contains {flag} {path}, which "
                                  "replacing it would delete; choose another folder")
        if _nested(save, source):
            raise ConversionError(f"--save-dir {save_dir} is inside {flag} {path}; choose a "
                                  "folder outside it")
    if os.path.isdir(save_dir) and os.listdir(save_dir) and not overwrite:
        raise ConversionError(f"--save-dir {save_dir} is not empty; pass --overwrite to replace it")
    # The temporary directory is created beside the save dir, so its parent must be writable.
    problem = writable_dir_problem(save_dir) or writable_dir_problem(
        os.path.dirname(os.path.abspath(save_dir)))
    if problem:
        raise ConversionError(f"--save-dir {save_dir}: {problem}")


@contextmanager
def atomic_directory(save_dir: str) -> Iterator[str]:
    parent = os.path.dirname(os.path.abspath(save_dir))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir honours the umask, unlike tempfile.mkdtemp's 0700, which the rename would keep.
    tmp = os.path.join(parent, f".{os.path.basename(save_dir)}.{secrets.token_hex(6)}.tmp")
    os.mkdir(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.isdir(save_dir):
        old = tmp + ".old"
        os.rename(save_dir, old)
    os.rename(tmp, save_dir)
    if old:
        shutil.rmtree(old)

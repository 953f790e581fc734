"""The output directory appears whole or not at all: write into a sibling temporary directory,
rename it into place at the end; a failure removes the temporary directory."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from modellink.checkpoint.errors import ConversionError


def check_save_dir(save_dir: str, load_dir: str, overwrite: bool) -> None:
    if os.path.abspath(save_dir) == os.path.abspath(load_dir):
        raise ConversionError("--save-dir must differ from --load-dir")
    if os.path.exists(save_dir) and not os.path.isdir(save_dir):
        raise ConversionError(f"--save-dir {save_dir} exists and is not a directory")
    if os.path.isdir(save_dir) and os.listdir(save_dir) and not overwrite:
        raise ConversionError(f"--save-dir {save_dir} is not empty; pass --overwrite to replace it")


@contextmanager
def atomic_directory(save_dir: str) -> Iterator[str]:
    parent = os.path.dirname(os.path.abspath(save_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(save_dir)}.", suffix=".tmp", dir=parent)
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

"""tests/launch_pretrain.py on a disk that fills up during one save.

Checkpoint files whose path contains MODELLINK_TEST_DISK_FULL (e.g. `iter_0000004.tmp`) accept
4 KiB and then fail with ENOSPC, as a full disk does: torch.save sees the error from inside its
writer, exactly where a real one reaches it.
"""
import errno
import os
import sys

import launch_pretrain
from modellink.errors import run_cli
from modellink.training.checkpoint import checkpointing

_CAPACITY = 4096


class _FillingFile:
    def __init__(self, handle):
        self._handle = handle
        self._written = 0

    def write(self, data) -> int:
        self._written += len(data)
        if self._written > _CAPACITY:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def _fill_up(marker: str) -> None:
    def filling_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        return _FillingFile(handle) if "w" in mode and marker in str(path) else handle

    checkpointing.open = filling_open  # module globals shadow the builtin


if __name__ == "__main__":
    _fill_up(os.environ["MODELLINK_TEST_DISK_FULL"])
    sys.exit(run_cli(launch_pretrain.main))

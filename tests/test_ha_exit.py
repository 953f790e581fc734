"""ExitMonitor: SIGTERM and --exit-duration-in-mins agree across ranks (a world of one here)."""
import argparse
import os
import signal
import time

import pytest
import torch

from modellink import backend
from modellink.training.ha.exit_conditions import ExitMonitor


@pytest.fixture
def world_of_one(tmp_path):
    backend.activate(backend.resolve("cpu"))  # the flags live on the (redirected) device
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                                         rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def _args(handler: bool, minutes=None) -> argparse.Namespace:
    return argparse.Namespace(exit_signal_handler=handler, exit_duration_in_mins=minutes)


def test_sigterm_sets_reason_and_handler_is_restored(world_of_one):
    before = signal.getsignal(signal.SIGTERM)
    monitor = ExitMonitor(_args(True), time.time())
    monitor.install()
    try:
        assert monitor.exit_reason() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert monitor.exit_reason() == "SIGTERM"
    finally:
        monitor.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_duration_elapsed(world_of_one):
    assert ExitMonitor(_args(False, 1), time.time()).exit_reason() is None
    late = ExitMonitor(_args(False, 1), time.time() - 61)
    assert late.exit_reason() == "--exit-duration-in-mins"


def test_inactive_monitor_does_no_collective():
    assert ExitMonitor(_args(False), time.time()).exit_reason() is None

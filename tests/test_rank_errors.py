"""How failures reach the user: one line for user errors, a traceback for anything else, and
in a multi-rank job the failing rank's own report plus one line from each peer it stopped."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, _free_port
from modellink.errors import run_cli
from modellink.training.data.datasets import DataError


def _raise(exc: Exception) -> None:
    raise exc


def test_user_error_is_one_line_with_status_2(monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert run_cli(lambda: _raise(DataError("--data-path x: no such dataset"))) == 2
    assert capsys.readouterr().err == "error: --data-path x: no such dataset\n"


def test_other_errors_keep_their_traceback(monkeypatch):
    """A ValueError from a library is a bug to see, not a user error to summarise."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="inside a library"):
        run_cli(lambda: _raise(ValueError("inside a library")))


def test_user_error_on_a_rank_names_it(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert run_cli(lambda: _raise(DataError("bad record"))) == 2
    assert capsys.readouterr().err == "rank 1: error: bad record\n"


def _run_probe(failure: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PROBE_FAILURE=failure)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "rank_failure_probe.py")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_error_inside_torch_on_rank_1_reaches_the_terminal():
    """Rank 1 fails inside torch while rank 0 waits for it in an all-reduce: rank 1 prints
    its traceback, rank 0 one line naming it instead of gloo's connection error."""
    result = _run_probe("torch")
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert "rank 1: Traceback (most recent call last):" in lines, result.stderr[-3000:]
    assert "rank 1:     torch.zeros(-1)" in lines
    assert "rank 1: RuntimeError: zeros: Dimension size must be non-negative." in lines
    assert "rank 0: stopped: rank 1 failed (see its error above)" in lines
    assert "Connection closed by peer" not in result.stderr


def test_user_error_on_rank_1_stops_rank_0_with_one_line():
    result = _run_probe("user")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("rank ")]
    assert lines == ["rank 1: error: --data-path probe: no such dataset",
                     "rank 0: stopped: rank 1 failed (see its error above)"], result.stderr[-3000:]

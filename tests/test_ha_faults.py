"""Fault injection on CPU runs: the restarted job's losses equal the uninterrupted run's.

Faults at DP=2: SIGTERM (dying-gasp checkpoint), SIGKILL of one rank (torchrun restarts the
job), a crash in the middle of a checkpoint write, and a corrupt latest checkpoint. On four
ranks (DP=4, PP=2 x DP=2): an exception on one rank, whose dying gasp every rank writes in
parts.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import psutil
import pytest
import torch

from conftest import ROOT, TINY_LLAMA, _free_port, run_in_one_job, run_ranks, train_history

ITERS = 24
DP2 = TINY_LLAMA + ["--use-distributed-optimizer", "--train-iters", str(ITERS)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    return train_history(tmp_path_factory.mktemp("straight"), DP2, nproc=2)


def _launch(args: List[str], history: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MODELLINK_CPU_THREADS="1",
               PYTHONWARNINGS="ignore", MODELLINK_TEST_HISTORY=str(history))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}",
           str(ROOT / "tests" / "launch_pretrain.py"), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_iteration(proc: subprocess.Popen, iteration: int) -> List[str]:
    """Read the job's log until the line for `iteration`; returns the lines read."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if f"iteration {iteration:8d}/" in line:
            return lines
    raise AssertionError("job ended before iteration %d:\n%s" % (iteration, "".join(lines[-40:])))


def _workers(proc: subprocess.Popen) -> List[psutil.Process]:
    try:
        return [p for p in psutil.Process(proc.pid).children()
                if "launch_pretrain" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _finish(proc: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def _assert_resumed_equal(resumed: dict, straight: dict) -> int:
    first = resumed["iteration"][0]
    assert resumed["iteration"] == list(range(first, ITERS + 1))
    assert resumed["loss"] == straight["loss"][first - 1:]
    assert resumed["grad_norm"] == straight["grad_norm"][first - 1:]
    return first - 1


def test_sigterm_saves_dying_gasp_checkpoint(straight, tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _launch(DP2 + ["--save", str(ckpt), "--exit-signal-handler"], tmp_path / "first.json")
    _wait_for_iteration(proc, 3)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to every worker
    out = _finish(proc)
    assert "saved dying-gasp checkpoint (SIGTERM)" in out, out[-3000:]
    saved = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert 3 <= saved < ITERS
    state = torch.load(ckpt / f"iter_{saved:07d}" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)
    assert state["dying_gasp"] == "SIGTERM"
    resumed = train_history(tmp_path, DP2 + ["--load", str(ckpt)], nproc=2, name="resumed")
    assert _assert_resumed_equal(resumed, straight) == saved


def test_sigkill_one_rank_then_restart_resumes_from_last_checkpoint(straight, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    args = DP2 + ["--save", ckpt, "--load", ckpt, "--save-interval", "4"]
    proc = _launch(args, tmp_path / "killed.json")
    _wait_for_iteration(proc, 6)
    victim = [p for p in _workers(proc) if p.environ().get("LOCAL_RANK") == "1"]
    assert len(victim) == 1
    victim[0].send_signal(signal.SIGKILL)
    _finish(proc)
    assert proc.returncode != 0
    # The scheduler's restart: the same command line again.
    resumed = train_history(tmp_path, args, nproc=2, name="resumed")
    resumed_from = _assert_resumed_equal(resumed, straight)
    assert resumed_from % 4 == 0 and resumed_from >= 4  # lost only the steps since that save


def _kill_during_a_save(proc: subprocess.Popen, ckpt: Path) -> Optional[int]:
    """Freeze the workers whenever a save's `.tmp` exists; if it is still in flight once they
    are frozen, kill them there and return its iteration, else let them go on."""
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        tmps = [n for n in os.listdir(ckpt) if n.startswith("iter_") and n.endswith(".tmp")
                ] if ckpt.exists() else []
        if not tmps or tmps[0] == "iter_0000001.tmp":  # the first save has no predecessor
            time.sleep(0.0005)
            continue
        workers = _workers(proc)
        for worker in workers:
            worker.suspend()
        if (ckpt / tmps[0]).exists() and not (ckpt / tmps[0][:-4]).exists():
            for worker in workers:
                worker.kill()
            return int(tmps[0][len("iter_"):-4])
        for worker in workers:
            worker.resume()
    return None


def test_crash_mid_checkpoint_write_keeps_previous(straight, tmp_path):
    """Freeze the job while a save is in flight (its `.tmp` exists), then kill it there."""
    ckpt = tmp_path / "ckpt"
    proc = _launch(DP2 + ["--save", str(ckpt), "--save-interval", "1"], tmp_path / "first.json")
    try:
        in_flight = _kill_during_a_save(proc, ckpt)
    finally:  # never leave a frozen job behind, whatever failed
        for worker in _workers(proc):
            worker.kill()
        _finish(proc)
    assert in_flight is not None, "no save caught in flight"
    latest = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert latest == in_flight - 1
    resumed = train_history(tmp_path, DP2 + ["--load", str(ckpt), "--save", str(ckpt)],
                            nproc=2, name="resumed")
    assert _assert_resumed_equal(resumed, straight) == latest
    assert not [n for n in os.listdir(ckpt) if n.endswith(".tmp")]


def test_corrupt_latest_falls_back_to_previous(straight, tmp_path):
    ckpt = tmp_path / "ckpt"
    train_history(tmp_path, TINY_LLAMA + ["--use-distributed-optimizer", "--train-iters", "6",
                                          "--save", str(ckpt), "--save-interval", "2",
                                          "--keep-last-n-checkpoints", "2"], nproc=2)
    assert sorted(os.listdir(ckpt)) == ["iter_0000004", "iter_0000006",
                                        "latest_checkpointed_iteration.txt"]
    shards = ckpt / "iter_0000006" / "mp_rank_00" / "distrib_optim.pt"
    shards.write_bytes(shards.read_bytes()[: shards.stat().st_size // 2])
    out = tmp_path / "resumed.json"
    # Saved with --train-iters 6: the constant LR is the same under the new schedule.
    result = run_ranks(DP2 + ["--load", str(ckpt), "--override-opt_param-scheduler"], nproc=2,
                       history=out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checkpoint at iteration 6 is unreadable" in result.stderr
    assert "resuming from the older checkpoint at iteration 4" in result.stderr
    assert _assert_resumed_equal(json.loads(out.read_text()), straight) == 4


# Four ranks, each with two micro-batches per step, so that the injected error (second
# micro-batch) falls in the step it names while the other ranks are mid-step.
PARTS = list(TINY_LLAMA)
PARTS[PARTS.index("--micro-batch-size") + 1] = "1"
PARTS += ["--use-distributed-optimizer", "--enable-high-availability", "--train-iters", "3"]
# A layout and the one rank (not rank 0) that fails in iteration 2: DP=4, whose peers block
# in the gradient reduce-scatter; PP=2 x DP=2, a first stage, whose next stage blocks in a
# receive and whose data-parallel peers in the reduce-scatter.
LAYOUTS = [("dp4", [], "2"), ("pp2_dp2", ["--pipeline-model-parallel-size", "2"], "1")]


def test_exception_on_one_rank_saves_from_every_rank(tmp_path):
    """One rank raises in iteration 2, the others are blocked in a collective with it and
    no rank holds the whole state: every rank writes its part of the iteration-1 dying
    gasp. The restarted job resumes from it with the losses and grad norms of an
    uninterrupted run, whose ordinary save at iteration 1 wrote the same optimizer bytes.
    Three jobs for both layouts (each process start costs more than the runs): fail A;
    resume A, run A straight, fail B; resume B, run B straight."""
    jobs: list = [[]]
    for name, layout, failing in LAYOUTS:
        faulty = PARTS + layout + ["--save", str(tmp_path / name), "--load", str(tmp_path / name)]
        straight = PARTS + layout + ["--save", str(tmp_path / f"{name}_straight"),
                                     "--save-interval", "1"]
        jobs[-1].append({"args": faulty, "fail": f"2:{failing}"})
        jobs.append([{"args": faulty, "history": str(tmp_path / f"{name}_resumed.json")},
                     {"args": straight, "history": str(tmp_path / f"{name}_straight.json")}])
    log = ""
    for runs in jobs:
        result = run_in_one_job(runs, nproc=4)
        log += result.stdout + result.stderr
        failed = runs[-1].get("fail") is not None
        assert (result.returncode != 0) == failed, log[-6000:]
    assert log.count("saved dying-gasp checkpoint (exception: ValueError) at iteration"
                     "       1") == len(LAYOUTS), log[-6000:]
    assert log.count("from the parts of ranks [0, 1, 2, 3]") == len(LAYOUTS)
    assert log.count("resuming from a dying-gasp checkpoint at iteration 1") == len(LAYOUTS)
    for name, _, _ in LAYOUTS:
        saved = tmp_path / name / "iter_0000001"
        reference = tmp_path / f"{name}_straight" / "iter_0000001"
        rank_dirs = sorted(os.listdir(reference))
        assert sorted(os.listdir(saved)) == rank_dirs
        for rank_dir in rank_dirs:
            state = torch.load(saved / rank_dir / "model_optim_rng.pt", weights_only=False)
            assert state["dying_gasp"] == "exception: ValueError"
            assert ((saved / rank_dir / "distrib_optim.pt").read_bytes()
                    == (reference / rank_dir / "distrib_optim.pt").read_bytes())
        resumed = json.loads((tmp_path / f"{name}_resumed.json").read_text())
        straight = json.loads((tmp_path / f"{name}_straight.json").read_text())
        assert resumed["iteration"] == [2, 3]
        assert resumed["loss"] == straight["loss"][1:]
        assert resumed["grad_norm"] == straight["grad_norm"][1:]

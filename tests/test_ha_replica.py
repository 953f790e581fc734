"""Replica optimizer and dying gasps on exceptions (`--enable-high-availability`), DP=2 on CPU.

Every resumed run must give the uninterrupted run's losses and grad norms bit for bit.
"""
import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import torch

from conftest import ROOT, TINY_LLAMA, _free_port, run_ranks, train_history
from modellink.arguments import ArgumentError, parse_args
from modellink.training.ha.replica import memory_account

ITERS = 6
REPLICA = TINY_LLAMA + ["--use-distributed-optimizer", "--enable-high-availability",
                        "--enable-optimizer-state-local-copy", "--train-iters", str(ITERS)]


@pytest.mark.parametrize("extra, world, message", [
    (["--enable-optimizer-state-local-copy"], 2, "needs --enable-high-availability"),
    (["--enable-high-availability", "--enable-optimizer-state-local-copy"], 2,
     "needs --use-distributed-optimizer"),
    (["--enable-high-availability", "--enable-optimizer-state-local-copy",
      "--use-distributed-optimizer"], 3, "even data-parallel size >= 2, got 3"),
    (["--enable-high-availability", "--enable-optimizer-state-local-copy",
      "--use-distributed-optimizer", "--tensor-model-parallel-size", "2"], 2,
     "even data-parallel size >= 2, got 1"),
])
def test_replica_flag_errors(extra, world, message):
    with pytest.raises(ArgumentError, match=message):
        parse_args(TINY_LLAMA + ["--train-iters", "2", "--global-batch-size", "12"] + extra,
                   world_size=world)


@pytest.mark.parametrize("extra, expected", [
    (["--bf16"], "4 + 16/4 = 8.00"),  # Megatron-LM's 4 + 16/d
    (["--bf16", "--enable-high-availability", "--enable-optimizer-state-local-copy"],
     "4 + 16/2 = 12.00"),  # the replica's 4 + 32/d
    (["--bf16", "--accumulate-allreduce-grads-in-fp32"], "6 + 12/4 = 9.00"),
    (["--bf16", "--context-parallel-size", "2"], "4 + 16/4 = 8.00"),  # DP 2 x CP 2 shards
])
def test_memory_account_follows_megatron(extra, expected):
    args = parse_args(TINY_LLAMA + ["--train-iters", "2", "--use-distributed-optimizer"] + extra,
                      world_size=4)
    assert str(memory_account(args, torch.bfloat16)).startswith(expected)


def _probe(tmp_path, nproc: int) -> list:
    out = tmp_path / "probe"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "replica_probe.py"), str(out),
           *TINY_LLAMA, "--train-iters", "3"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((tmp_path / f"probe.{rank}.json").read_text()) for rank in range(nproc)]


@pytest.mark.parametrize("dp", [2, 4])  # 1 shard x 2 copies; 2 shards x 2 copies
def test_replica_memory_is_measured_and_restores_in_memory(dp, tmp_path):
    ranks = _probe(tmp_path, dp)
    fp32 = torch.tensor([], dtype=torch.float32).element_size()
    for kind, shards in (("distopt", dp), ("replica", dp // 2)):
        numel = ranks[0][kind]["numel"]
        # fp32 on CPU: weights and grad buffer on every rank, Adam's two moments sharded (the
        # fp32 main params are the weights themselves).
        expected = [2 * fp32, 2 * fp32, shards]
        assert all(r[kind]["account"] == expected for r in ranks)
        for r in ranks:  # allocations exceed the count only by bucket padding
            assert 1 <= r[kind]["replicated"] / (expected[0] * numel) < 1.01
            assert 0.98 < r[kind]["sharded"] * shards / (expected[1] * numel) < 1.02
        copies = dp // shards  # every moment exactly once per optimizer instance
        assert sum(r[kind]["sharded"] for r in ranks) == copies * expected[1] * numel
    per_rank = [(r["distopt"]["sharded"], r["replica"]["sharded"]) for r in ranks]
    assert all(1.96 < replica / distopt < 2.04 for distopt, replica in per_rank)
    print(f"optimizer state bytes per rank (distopt, replica) at DP {dp}: {per_rank}")
    lost = [r["replica"]["lost"] for r in ranks]
    assert lost == [r["replica"]["instance"] == 1 for r in ranks] and any(lost)
    assert all(r["replica"]["restored"] for r in ranks)
    assert len({r["replica"]["next_loss"] for r in ranks}) == 1


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict:
    return train_history(tmp_path_factory.mktemp("straight"), REPLICA, nproc=2)


def _faulty_run(tmp_path, fail: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore", MODELLINK_TEST_FAIL=fail)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "launch_faulty_pretrain.py"),
           *REPLICA, "--save", str(tmp_path / "ckpt")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0, result.stderr[-4000:]
    return result


@pytest.mark.parametrize("failing_ranks, lost", [("0,1", "distrib_optim.pt"),
                                                 ("1", "distrib_optim_replica.pt")])
def test_exception_dying_gasp_then_lost_shard_resumes_identically(failing_ranks, lost,
                                                                  straight, tmp_path):
    """A data error in iteration 5: on every rank they save together; on rank 1 alone (rank 0
    is blocked in the gradient all-reduce) rank 1 holds the whole state and saves it alone.
    Then one copy of the optimizer state is lost (truncated / deleted): the other serves."""
    result = _faulty_run(tmp_path, f"5:{failing_ranks}")
    ckpt = tmp_path / "ckpt"
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    assert tracker.exists() and tracker.read_text() == "4", result.stderr[-4000:]
    rank_dir = ckpt / "iter_0000004" / "mp_rank_00"
    assert sorted(os.listdir(rank_dir)) == ["distrib_optim.pt", "distrib_optim_replica.pt",
                                            "model_optim_rng.pt"]
    state = torch.load(rank_dir / "model_optim_rng.pt", weights_only=False)
    assert state["dying_gasp"] == "exception: ValueError"
    assert ("modellink: memory per rank (replica distributed optimizer): 8 + 8/1 = 16.00 bytes "
            "per parameter") in result.stdout  # fp32, each rank holding the whole state
    if failing_ranks == "1":
        assert "failed on only some ranks; saved dying-gasp checkpoint" in result.stderr
    shards = rank_dir / lost
    if lost == "distrib_optim.pt":
        shards.write_bytes(shards.read_bytes()[: shards.stat().st_size // 2])
    else:
        shards.unlink()
    out = tmp_path / "resumed.json"
    resumed_run = run_ranks(REPLICA + ["--load", str(ckpt)], nproc=2, history=out)
    assert resumed_run.returncode == 0, resumed_run.stderr[-4000:]
    assert f"{shards}" in resumed_run.stderr
    assert "loading the optimizer state from its replica" in resumed_run.stderr
    resumed = json.loads(out.read_text())
    assert resumed["iteration"] == list(range(5, ITERS + 1))
    assert resumed["loss"] == straight["loss"][4:]
    assert resumed["grad_norm"] == straight["grad_norm"][4:]


def test_dp4_lost_shard_file_is_loaded_from_its_replica(tmp_path):
    """2 shards x 2 copies: instance 0's reading rank finds its file truncated."""
    args = REPLICA[:-1] + ["4"]
    ckpt = tmp_path / "ckpt"
    straight = train_history(tmp_path, args + ["--save", str(ckpt), "--save-interval", "2"],
                             nproc=4, name="straight")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    shards = ckpt / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt"
    shards.write_bytes(shards.read_bytes()[: shards.stat().st_size // 2])
    out = tmp_path / "resumed.json"
    result = run_ranks(args + ["--load", str(ckpt)], nproc=4, history=out)
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"rank 0: corrupt checkpoint file {shards}" in result.stderr
    resumed = json.loads(out.read_text())
    assert resumed["iteration"] == [3, 4]
    assert resumed["loss"] == straight["loss"][2:]
    assert resumed["grad_norm"] == straight["grad_norm"][2:]


def test_nan_guard_saves_dying_gasp_of_last_good_iteration(tmp_path):
    # A huge learning rate overflows the weights in step 1, so step 2's loss is not finite.
    args = [a if a != "1e-3" else "1e30" for a in TINY_LLAMA]
    ckpt = tmp_path / "ckpt"
    result = run_ranks(args + ["--train-iters", "5", "--clip-grad", "0", "--save", str(ckpt),
                               "--check-for-nan-in-loss-and-grad", "--enable-high-availability"],
                       nproc=1)
    assert result.returncode != 0 and "NonFiniteError: iteration 2" in result.stderr
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "1"
    state = torch.load(ckpt / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)
    assert state["dying_gasp"] == "exception: NonFiniteError"


def test_sigkill_of_one_rank_loses_at_most_the_step_in_flight(straight, tmp_path):
    """Rank 0 is SIGKILLed mid-run; torchrun SIGTERMs rank 1, which writes the dying gasp of
    the last completed iteration from memory (instance 0's optimizer file from its replica).
    The restarted job (the same command) resumes from it identically."""
    ckpt = str(tmp_path / "ckpt")
    args = REPLICA + ["--save", ckpt, "--load", ckpt]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "launch_pretrain.py"), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    log, completed = [], 0
    for line in proc.stdout:
        log.append(line)
        if "iteration        1/" in line:
            break
    victim = [p for p in psutil.Process(proc.pid).children()
              if p.environ().get("LOCAL_RANK") == "0"]
    assert len(victim) == 1, "".join(log)
    victim[0].kill()
    killed = time.perf_counter()
    published = None
    for line in proc.stdout:
        log.append(line)
        if published is None and "saved dying-gasp checkpoint" in line:
            published = time.perf_counter() - killed
    proc.wait(timeout=60)
    text = "".join(log)
    completed = max(int(line.split("iteration")[1].split("/")[0]) for line in log
                    if "lm loss:" in line)
    assert proc.returncode != 0 and published is not None, text[-6000:]
    saved = int((tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text())
    assert saved >= completed  # every step rank 1 logged as done is in it
    print(f"SIGKILL of rank 0 in iteration {completed + 1}: dying gasp of iteration "
          f"{saved} published {published:.2f} s after the kill")
    resumed_run = run_ranks(args, nproc=2, history=tmp_path / "resumed.json")
    assert resumed_run.returncode == 0, resumed_run.stderr[-4000:]
    assert "resuming from a dying-gasp checkpoint" in resumed_run.stdout + resumed_run.stderr
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["iteration"] == list(range(saved + 1, ITERS + 1))
    assert resumed["loss"] == straight["loss"][saved:]
    assert resumed["grad_norm"] == straight["grad_norm"][saved:]

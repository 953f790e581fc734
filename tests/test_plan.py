"""The memory planner (modellink/plan): its weight, gradient and optimizer bytes equal the
tensor bytes of the model, DDP buffers and optimizer that pretrain() builds (one job per world
size, tests/plan_probe.py), and bad input is a one-line error."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, _free_port
from modellink.argument_errors import ArgumentError
from modellink.plan.cli import main as plan_main, parse_memory
from modellink.training.pretrain import pretrain

BASE = [
    "--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "16", "--mock-data", "--vocab-size", "100",
    "--micro-batch-size", "2", "--global-batch-size", "4", "--seed", "1234",
    "--use-cpu-initialization", "--device", "cpu", "--log-interval", "1",
    "--eval-interval", "1000", "--eval-iters", "0", "--lr", "1e-3", "--train-iters", "1",
    "--attention-dropout", "0", "--hidden-dropout", "0",
]
LLAMA = ["--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
         "--position-embedding-type", "rope"]
ONE_RANK = {
    "fp32 untied GQA": LLAMA + ["--untie-embeddings-and-output-weights",
                                "--group-query-attention", "--num-query-groups", "2"],
    "bf16 distributed optimizer, fp32 grads, qk norm": [
        "--bf16", "--use-distributed-optimizer", "--accumulate-allreduce-grads-in-fp32",
        "--qk-layernorm"],
}
TWO_RANKS = {
    "TP2 SP, LayerNorm, biases": ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                  "--bf16", "--add-qkv-bias"],
    "PP2 VPP2, tied embeddings": LLAMA + ["--pipeline-model-parallel-size", "2",
                                          "--num-layers-per-virtual-pipeline-stage", "1"],
    "MoE EP2, shared expert": ["--num-experts", "4", "--expert-model-parallel-size", "2",
                               "--bf16", "--use-distributed-optimizer", "--disable-bias-linear",
                               "--moe-shared-expert-intermediate-size", "32",
                               "--shared-expert-gate"],
    "CP2 distributed optimizer": ["--context-parallel-size", "2", "--use-flash-attn", "--bf16",
                                  "--use-distributed-optimizer", "--position-embedding-type",
                                  "rope"],
    "replica optimizer": ["--bf16", "--use-distributed-optimizer",
                          "--enable-high-availability", "--enable-optimizer-state-local-copy"],
}


def _probe(tmp_path, runs, nproc):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore",
               MODELLINK_TEST_RUNS=json.dumps([BASE + flags for flags in runs.values()]))
    probe = str(ROOT / "tests" / "plan_probe.py")
    if nproc == 1:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        cmd = [sys.executable, probe, str(tmp_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", probe, str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {name: [json.loads((tmp_path / f"{index}.{rank}.json").read_text())
                   for rank in range(nproc)]
            for index, name in enumerate(runs)}


def _check(records, sharded_over_two=()):
    for name, ranks in records.items():
        for record in ranks:
            for key in ("weights", "grads"):
                assert record["planned"][key] == record["measured"][key], (name, key)
        if name in sharded_over_two:
            # Shard edges follow DDP's alignment padding, so one rank may hold a few more
            # elements than the other; the pair holds exactly the planned state.
            planned = sum(r["planned"]["optimizer"] for r in ranks)
            assert planned == sum(r["measured"]["optimizer"] for r in ranks), name
        else:
            for record in ranks:
                assert record["planned"]["optimizer"] == record["measured"]["optimizer"], name


def test_one_rank_bytes_equal_the_built_model(tmp_path):
    _check(_probe(tmp_path, ONE_RANK, 1))


def test_two_rank_layouts_bytes_equal_the_built_model(tmp_path):
    _check(_probe(tmp_path, TWO_RANKS, 2),
           sharded_over_two=("MoE EP2, shared expert", "CP2 distributed optimizer"))


@pytest.mark.parametrize("text, expected", [("64GB", 64 * 10**9), ("80GiB", 80 * 2**30),
                                            ("1.5 TB", 1.5e12), ("512MiB", 512 * 2**20)])
def test_memory_strings(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["--devices", "8", "--device-memory", "64 parsecs"], "--device-memory '64 parsecs'"),
    (["--devices", "6", "--tensor-model-parallel-size", "4", "--device-memory", "64GB"],
     "world size 6 is not divisible"),
    (["--devices", "8", "--num-layers", "30", "--pipeline-model-parallel-size", "4",
      "--device-memory", "64GB"], "--num-layers 30 is not divisible"),
])
def test_bad_input_is_one_line(argv, message):
    flags = BASE + LLAMA
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(")) as error:
        plan_main(flags + argv)
    assert "\n" not in str(error.value)


def test_plan_only_prints_the_runs_plan_and_starts_nothing(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    pretrain(BASE + ["--tensor-model-parallel-size", "2", "--plan-only"])
    out = capsys.readouterr().out
    assert "TP 2 x PP 1 x CP 1 x DP 1" in out and "peak:" in out
    assert not torch.distributed.is_initialized()
    plan_main(BASE + ["--tensor-model-parallel-size", "2", "--devices", "2"])
    # pretrain() pads the mock tokenizer's vocabulary (100 + end-of-document), the planner
    # --vocab-size: both round up to the same 128 x TP multiple, so the plans agree.
    assert capsys.readouterr().out == out

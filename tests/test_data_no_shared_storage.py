"""--no-shared-storage with two "nodes" on this machine: two torchrun agents (--nnodes 2, one
rank each), each node with its own copy of the data and its own cache folder, as nodes that
share no file system. Without the flag the second node finds no index caches (rank 0 wrote
them on its own node) and says so; with it each node's first rank builds its own, and training
gives the losses of the run where both nodes share one folder."""
import json
import os
import shutil
import subprocess
import sys

import torch

from conftest import ROOT, _free_port
from modellink.patches.node_local_caches import first_local_ranks_build
from test_pretrain_data import MODEL, _write_dataset

ARGS = MODEL + ["--train-iters", "3", "--split", "100,0,0"]
INDEX_FILES = ("document_index.npy", "sample_index.npy", "shuffle_index.npy")


def _node(node: int, port: int, runs: list) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore",
               MODELLINK_TEST_RUNS=json.dumps(runs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
           "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
           str(ROOT / "tests" / "launch_pretrain_runs.py")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _runs(tmp_path, node: int) -> list:
    """Shared folder; per-node folders with the flag; per-node folders without it (fails)."""
    own = tmp_path / f"node{node}"
    data = str(own / "corpus_text_document")
    shared = ["--data-path", str(tmp_path / "shared" / "corpus_text_document"),
              "--data-cache-path", str(tmp_path / "shared" / "cache")]
    return [
        {"args": ARGS + shared, "history": str(tmp_path / "shared.json")},
        {"args": ARGS + ["--data-path", data, "--data-cache-path", str(own / "cache"),
                         "--no-shared-storage"], "history": str(tmp_path / "per_node.json")},
        {"args": ARGS + ["--data-path", data, "--data-cache-path", str(own / "unflagged")]},
    ]


def _cached(folder) -> list:
    return sorted(name.rsplit("-", 1)[-1] for name in os.listdir(folder)
                  if name.endswith(INDEX_FILES))


def test_each_node_builds_its_own_index_caches(tmp_path):
    (tmp_path / "shared").mkdir()
    _write_dataset(tmp_path / "shared" / "corpus_text_document", seed=11)
    for node in (0, 1):
        os.makedirs(tmp_path / f"node{node}")
        for suffix in (".bin", ".idx"):
            shutil.copy(tmp_path / "shared" / f"corpus_text_document{suffix}",
                        tmp_path / f"node{node}" / f"corpus_text_document{suffix}")
    port = _free_port()
    nodes = [_node(node, port, _runs(tmp_path, node)) for node in (0, 1)]
    (out0, err0), (out1, err1) = [node.communicate(timeout=300) for node in nodes]
    logs = out0[-2000:] + err0[-3000:] + out1[-2000:] + err1[-3000:]

    shared = json.loads((tmp_path / "shared.json").read_text())
    per_node = json.loads((tmp_path / "per_node.json").read_text())
    assert per_node["loss"] == shared["loss"] and len(shared["loss"]) == 3, logs
    for node in (0, 1):
        assert _cached(tmp_path / f"node{node}" / "cache") == sorted(INDEX_FILES), node

    # Without the flag, rank 0 (node 0) builds; node 1's rank finds nothing and says why.
    assert nodes[1].returncode != 0 and nodes[0].returncode != 0, logs
    errors = [line for line in err1.splitlines() if "error: " in line]
    assert len(errors) == 1, logs
    assert "is missing on this rank's node" in errors[0] and "--no-shared-storage" in errors[0]
    assert "node1/unflagged" in errors[0]
    assert _cached(tmp_path / "node0" / "unflagged") == sorted(INDEX_FILES)
    assert not (tmp_path / "node1" / "unflagged").exists()


def test_only_first_local_ranks_build_and_only_while_building(monkeypatch):
    """A node's other ranks keep their rank (they read what their first rank built), other
    groups' ranks are untouched, and the default group's rank is real again afterwards."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 3)
    for local_rank, building in (("0", 0), ("1", 3)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with first_local_ranks_build(True):
            assert torch.distributed.get_rank() == building
            assert torch.distributed.get_rank(group="tensor-parallel") == 3
        assert torch.distributed.get_rank() == 3
        with first_local_ranks_build(False):
            assert torch.distributed.get_rank() == 3

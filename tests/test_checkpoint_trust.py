"""Loading checkpoints runs no pickled code; release checkpoints, a --load with nothing in it and
a disk that fills up mid-save behave as the README's fault table says."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from megatron.core.enums import ModelType
from megatron.core.transformer.enums import AttnBackend

from conftest import ROOT, TINY_LLAMA, _free_port, run_ranks, train_history
from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.megatron_reader import MegatronSource
from modellink.checkpoint.safe_load import load_pt
from modellink.training.checkpoint.checkpointing import CheckpointError
from test_convert_families import convert

RANK_FILE = os.path.join("iter_0000002", "mp_rank_00", "model_optim_rng.pt")


class _Payload:
    """Unpickling this creates `path`: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust")
    train_history(tmp, TINY_LLAMA + ["--train-iters", "4", "--save", str(tmp / "ckpt"),
                                     "--save-interval", "2"], nproc=1)
    return tmp / "ckpt"


def _poisoned(saved, root, marker):
    """A copy of `saved` whose latest rank file carries the payload in its args."""
    shutil.copytree(saved, root)
    (root / "latest_checkpointed_iteration.txt").write_text("2")
    shutil.rmtree(root / "iter_0000004")
    state = load_pt(str(root / RANK_FILE), CheckpointError)
    state["args"].payload = _Payload(marker)
    torch.save(state, root / RANK_FILE)
    return root / RANK_FILE


def _one_error_line(result):
    """A user error: non-zero exit, one `error:` line, no frame of our code or megatron's."""
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "/modellink/" not in result.stderr and "megatron/core" not in result.stderr
    return errors[0]


def test_checkpoints_of_a_training_run_load_safely(saved):
    state = load_pt(str(saved / RANK_FILE), CheckpointError)
    assert {"args", "model", "optimizer", "opt_param_scheduler", "rng_state"} <= set(state)


def test_pickled_payload_is_refused_by_every_reader(saved, tmp_path):
    marker = tmp_path / "pwned"
    target = _poisoned(saved, tmp_path / "ckpt", marker)
    before = target.read_bytes()
    with pytest.raises(ConversionError, match="unsupported type io.open"):
        MegatronSource(str(tmp_path / "ckpt"))
    message = _one_error_line(run_ranks(TINY_LLAMA + ["--train-iters", "4", "--load",
                                                      str(tmp_path / "ckpt")], nproc=1))
    assert f"{target}: unsupported type io.open" in message
    assert not marker.exists()
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path / "ckpt")) == [
        "iter_0000002", "latest_checkpointed_iteration.txt"]


def _megatron_lm_release(saved, root):
    """Megatron-LM's layout for a weights-only checkpoint, its args holding the megatron-core
    enums Megatron-LM stores there."""
    (root / "release").mkdir(parents=True)
    shutil.copytree(saved / "iter_0000002" / "mp_rank_00", root / "release" / "mp_rank_00")
    (root / "latest_checkpointed_iteration.txt").write_text("release")
    path = root / "release" / "mp_rank_00" / "model_optim_rng.pt"
    state = load_pt(str(path), CheckpointError)
    state["args"].model_type = ModelType.encoder_or_decoder
    state["args"].attention_backend = AttnBackend.auto
    torch.save({"args": state["args"], "iteration": 0, "model": state["model"],
                "checkpoint_version": 3.0}, path)
    return root


def _torchrun(script, args, **env):
    """One CPU rank running tests/`script` (which imports the tests' launch helpers)."""
    full_env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
                    MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore", **env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
           f"--master-port={_free_port()}", str(ROOT / "tests" / script), *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)


def test_release_checkpoint_and_missing_load(saved, tmp_path):
    """One job: fine-tune and train from a Megatron-LM release checkpoint, then a --load that
    does not exist (a warning and a fresh start without --finetune)."""
    release = _megatron_lm_release(saved, tmp_path / "release_ckpt")
    convert("--load-model-type", "mg", "--save-model-type", "mg", "--load-dir", str(release),
            "--save-dir", str(tmp_path / "resharded"))
    assert (tmp_path / "resharded" / "latest_checkpointed_iteration.txt").is_file()
    runs = [{"args": TINY_LLAMA + ["--train-iters", "1", "--load", str(release)] + extra,
             "history": str(tmp_path / f"{name}.json")}
            for name, extra in (("finetune", ["--finetune"]), ("resume", []))]
    runs.append({"args": TINY_LLAMA + ["--train-iters", "1", "--load", str(tmp_path / "typo")],
                 "history": str(tmp_path / "fresh.json")})
    result = _torchrun("launch_pretrain_runs.py", [], MODELLINK_TEST_RUNS=json.dumps(runs))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("finetune", "resume", "fresh"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["iteration"] == [1]
    assert result.stdout.count("loaded the weights of the release checkpoint") == 2
    assert (f"WARNING: --load {tmp_path / 'typo'} does not exist: training starts from random "
            f"weights") in result.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("flag, reason", [("--finetune", "--finetune needs its weights"),
                                          ("--exit-on-missing-checkpoint",
                                           "--exit-on-missing-checkpoint")])
def test_missing_load_is_an_error_when_asked(tmp_path, flag, reason):
    message = _one_error_line(run_ranks(TINY_LLAMA + ["--train-iters", "2", flag, "--load",
                                                      str(tmp_path / "typo")], nproc=1))
    assert message.endswith(f"error: --load {tmp_path / 'typo'} does not exist ({reason})")
    assert os.listdir(tmp_path) == []


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    result = _torchrun("launch_disk_full.py", TINY_LLAMA + [
        "--train-iters", "4", "--save", str(ckpt), "--save-interval", "2"],
        MODELLINK_TEST_DISK_FULL="iter_0000004.tmp")
    message = _one_error_line(result)
    partial = ckpt / "iter_0000004.tmp" / "mp_rank_00" / "model_optim_rng.pt"
    assert message.endswith(f"error: saving the checkpoint of iteration 4 to --save {ckpt} "
                            f"failed: {partial}: No space left on device; latest stays "
                            f"iteration 2")
    assert sorted(os.listdir(ckpt)) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert "iteration" in load_pt(str(ckpt / RANK_FILE), CheckpointError)

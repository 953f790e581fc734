"""Checkpoints: resume is bit-exact, saves are atomic, bad checkpoints fail clearly."""
import os
import re

import pytest

from conftest import TINY_LLAMA, run_ranks, train_history

# DP=2 with the distributed optimizer resumes bit-exactly in every test of test_ha_faults.py
# (after SIGTERM, SIGKILL, a crash mid-write and a corrupt latest checkpoint).
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_resume_is_bit_exact(layout, tmp_path):
    args = TINY_LLAMA + LAYOUTS[layout] + ["--lr-decay-style", "cosine", "--lr-warmup-iters", "2"]
    straight = train_history(tmp_path, args + ["--train-iters", "10"], nproc=2, name="straight")
    ckpt = str(tmp_path / "ckpt")
    first = train_history(tmp_path, args + ["--train-iters", "10", "--exit-interval", "5",
                                            "--save", ckpt], nproc=2, name="first")
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "5"
    second = train_history(tmp_path, args + ["--train-iters", "10", "--load", ckpt],
                           nproc=2, name="second")
    assert second["iteration"] == list(range(6, 11))
    assert first["loss"] + second["loss"] == straight["loss"]
    assert first["grad_norm"] + second["grad_norm"] == straight["grad_norm"]


def test_checkpoint_layout_matches_megatron(tmp_path):
    ckpt = tmp_path / "ckpt"
    train_history(tmp_path, TINY_LLAMA + ["--train-iters", "2", "--save", str(ckpt),
                                          "--pipeline-model-parallel-size", "2"], nproc=2)
    iteration = ckpt / "iter_0000002"
    assert sorted(os.listdir(iteration)) == ["mp_rank_00_000", "mp_rank_00_001"]
    assert os.listdir(iteration / "mp_rank_00_000") == ["model_optim_rng.pt"]
    assert not [p for p in os.listdir(ckpt) if p.endswith(".tmp")]


def _fail(tmp_path, args, nproc=1):
    result = run_ranks(args, nproc)
    assert result.returncode != 0
    # Each failing rank prints one line, prefixed with its rank when there are several.
    errors = [re.sub(r"^rank \d+: ", "", line) for line in result.stderr.splitlines()
              if re.match(r"^(rank \d+: )?error: ", line)]
    assert len(errors) == nproc and len(set(errors)) == 1, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saved")
    ckpt = tmp / "ckpt"
    # Saved at 2 of 4 iterations: resuming with --train-iters 4 keeps the LR schedule.
    train_history(tmp, TINY_LLAMA + ["--train-iters", "4", "--exit-interval", "2",
                                     "--save", str(ckpt)], nproc=1)
    return ckpt


def test_load_wrong_layout_names_flag(saved, tmp_path):
    message = _fail(tmp_path, TINY_LLAMA + ["--train-iters", "4", "--load", str(saved),
                                            "--tensor-model-parallel-size", "2"], nproc=2)
    assert "--tensor-model-parallel-size" in message and "convert_ckpt" in message


def test_load_wrong_shape_is_clear(saved, tmp_path):
    args = [a if a != "64" else "96" for a in TINY_LLAMA]  # hidden size 96 instead of 64
    message = _fail(tmp_path, args + ["--train-iters", "4", "--load", str(saved)])
    assert "do not fit the model" in message


def test_load_corrupt_file_is_clear(saved, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    target = bad / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"
    target.write_bytes(target.read_bytes()[:1000])
    message = _fail(tmp_path, TINY_LLAMA + ["--train-iters", "4", "--load", str(bad)])
    assert "corrupt checkpoint file" in message and str(target) in message


def test_load_directory_without_tracker(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_text("x")
    message = _fail(tmp_path, TINY_LLAMA + ["--train-iters", "4", "--load",
                                            str(tmp_path / "junk")])
    assert "not a checkpoint directory" in message


def test_crash_during_save_keeps_previous_checkpoint(saved, tmp_path):
    """A stale `.tmp` directory (a save that died half-way) is ignored and replaced."""
    import shutil
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved, ckpt)
    half = ckpt / "iter_0000004.tmp" / "mp_rank_00"
    half.mkdir(parents=True)
    (half / "model_optim_rng.pt").write_bytes(b"partial")
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "2"
    history = train_history(tmp_path, TINY_LLAMA + ["--train-iters", "4", "--load", str(ckpt),
                                                    "--save", str(ckpt)], nproc=1)
    assert history["iteration"] == [3, 4]
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert not (ckpt / "iter_0000004.tmp").exists()


def test_bf16_finetune_starts_from_the_loaded_weights(saved, tmp_path):
    """Without optimizer state, the bf16 optimizer's fp32 main weights come from the weights
    just loaded; before, they stayed the random initial ones, which its first step wrote back
    into the model. At learning rate 0 the saved weights are the loaded ones in bf16."""
    import torch
    tuned = tmp_path / "tuned"
    train_history(tmp_path, TINY_LLAMA + ["--train-iters", "1", "--bf16", "--lr", "0",
                                          "--finetune", "--load", str(saved),
                                          "--save", str(tuned)], nproc=1)
    before = torch.load(saved / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                        weights_only=False)["model"]
    after = torch.load(tuned / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)["model"]
    weights = [name for name, value in before.items() if isinstance(value, torch.Tensor)]
    assert weights
    for name in weights:
        assert torch.equal(after[name], before[name].to(torch.bfloat16)), name

"""--no-load-optim and --no-load-rng on a checkpoint where they matter: Adam's moments and
torch's RNG state right after the load, compared with what the checkpoint holds.

One single-rank job (tests/optimizer_probe.py): train 2 iterations with Adam and dropout (so
the moments are non-zero and the RNG has moved) of a 3-iteration run, save, then resume
twice."""

import pytest
import torch

from conftest import run_optimizer_probe
from test_optimizer_settings import MODEL

TRAIN = MODEL + ["--hidden-dropout", "0.1", "--lr", "1e-3", "--lr-decay-style", "constant",
                 "--weight-decay", "0.01"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    ckpt = str(root / "ckpt")
    runs = [
        {"name": "saved", "args": TRAIN + ["--train-iters", "3", "--exit-interval", "2",
                                           "--save", ckpt]},
        {"name": "fresh", "args": TRAIN + ["--train-iters", "3", "--load", ckpt, "--no-load-optim",
                                           "--no-load-rng"]},
        {"name": "restored", "args": TRAIN + ["--train-iters", "3", "--load", ckpt]},
    ]
    out = root / "records.pt"
    records = run_optimizer_probe(runs, out)
    saved_rng = torch.load(root / "ckpt" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                           weights_only=False)["rng_state"][0]["torch_rng_state"]
    return records, saved_rng


def test_adam_moments_are_restored_by_default(records):
    runs, _ = records
    saved, loaded = runs["saved"]["final_state"], runs["restored"]["loaded_state"]
    assert saved.keys() == loaded.keys()
    for name, state in saved.items():
        assert state["exp_avg"].abs().sum() > 0 and state["exp_avg_sq"].abs().sum() > 0, name
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(loaded[name][key], state[key]), f"{name} {key}"


def test_no_load_optim_starts_adam_from_zero_moments(records):
    runs, _ = records
    for name, state in runs["fresh"]["loaded_state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert key not in state or not state[key].any(), f"{name} {key} kept its value"


def test_rng_state_is_restored_unless_no_load_rng(records):
    runs, saved_rng = records
    assert torch.equal(runs["restored"]["loaded_rng"], saved_rng)
    assert not torch.equal(runs["fresh"]["loaded_rng"], saved_rng)

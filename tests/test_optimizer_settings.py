"""The learning-rate schedule, the weight-decay schedule and --clip-grad, read from the
optimizer of a real run and compared with values computed here by hand (non-default flags,
so a flag that is dropped on the way to megatron-core shows).

One single-rank job (tests/optimizer_probe.py) runs every case; steps count samples, so each
case uses --global-batch-size 2 and the formulas below count iterations x 2."""
import math

import pytest
import torch

from conftest import run_optimizer_probe

MODEL = [
    "--num-layers", "2", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "16", "--max-position-embeddings", "16",
    "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
    "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--attention-dropout", "0", "--hidden-dropout", "0",
    "--mock-data", "--vocab-size", "100", "--padded-vocab-size", "128",
    "--micro-batch-size", "2", "--global-batch-size", "2",
    "--seed", "1234", "--use-cpu-initialization", "--device", "cpu",
    "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "0",
]
LR, MIN_LR = 0.01, 0.001
RUNS = {
    # warmup 3 iterations, linear decay to iteration 8, then --min-lr; weight decay rises
    # linearly from 0.02 to 0.1 over the run's 10 iterations.
    "linear": ["--lr", str(LR), "--min-lr", str(MIN_LR), "--lr-warmup-iters", "3",
               "--lr-decay-style", "linear", "--lr-decay-iters", "8", "--train-iters", "10",
               "--start-weight-decay", "0.02", "--end-weight-decay", "0.1",
               "--weight-decay-incr-style", "linear"],
    "cosine": ["--lr", str(LR), "--min-lr", str(MIN_LR), "--lr-warmup-iters", "2",
               "--lr-warmup-init", "0.002", "--lr-decay-style", "cosine", "--train-iters", "6",
               "--start-weight-decay", "0.05", "--end-weight-decay", "0.15",
               "--weight-decay-incr-style", "cosine"],
    "inverse_sqrt": ["--lr", str(LR), "--min-lr", str(MIN_LR), "--lr-warmup-iters", "2",
                     "--lr-decay-style", "inverse-square-root", "--train-iters", "5",
                     "--weight-decay", "0.03"],
    "wsd": ["--lr", str(LR), "--min-lr", str(MIN_LR), "--lr-decay-style", "WSD",
            "--lr-wsd-decay-style", "linear", "--lr-wsd-decay-iters", "3", "--train-iters", "6"],
    # Plain SGD (no momentum, no weight decay), so every update is -lr x the clipped gradient;
    # the second step's is checked (a momentum left on would add the first one's).
    "clip": ["--optimizer", "sgd", "--sgd-momentum", "0", "--weight-decay", "0", "--lr", "0.5",
             "--lr-decay-style", "constant", "--clip-grad", "0.1", "--train-iters", "2"],
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizer") / "records.pt"
    runs = [{"name": name, "args": MODEL + flags, "capture_update": name == "clip"}
            for name, flags in RUNS.items()]
    return run_optimizer_probe(runs, out)


def decayed_groups(record):
    """Per iteration, the group(s) with parameters whose weight decay is not switched off."""
    return [[g for g in groups if g["wd_mult"] == 1.0 and g["size"]] for groups in record["groups"]]


def check_schedule(record, expected_lr, expected_wd):
    lrs = [[g["lr"] for g in groups if g["size"]] for groups in record["groups"]]
    assert len(lrs) == len(expected_lr)
    for iteration, (got, want) in enumerate(zip(lrs, expected_lr), start=1):
        assert got == pytest.approx([want] * len(got), rel=1e-12), f"lr after iteration {iteration}"
    for iteration, (groups, want) in enumerate(zip(decayed_groups(record), expected_wd), start=1):
        assert groups, "no parameter group has weight decay"
        assert [g["weight_decay"] for g in groups] == pytest.approx([want] * len(groups),
                                                                    rel=1e-12), \
            f"weight decay after iteration {iteration}"
    no_decay = [g for groups in record["groups"] for g in groups
                if g["wd_mult"] == 0.0 and g["size"]]
    assert no_decay and all(g["weight_decay"] == 0.0 for g in no_decay)


def test_linear_warmup_decay_and_weight_decay_increment(records):
    # After iteration k: warmup lr*k/3 up to k=3, then linear from lr at 3 to min-lr at 8.
    lr = [LR * k / 3 if k <= 3 else MIN_LR + (LR - MIN_LR) * (1 - (k - 3) / 5) if k <= 8
          else MIN_LR for k in range(1, 11)]
    wd = [0.02 + (0.1 - 0.02) * k / 10 for k in range(1, 11)]
    check_schedule(records["linear"], lr, wd)


def test_cosine_decay_from_warmup_init_and_cosine_weight_decay(records):
    # --lr-decay-iters defaults to the run's length (6); warmup starts at --lr-warmup-init.
    lr = [0.002 + (LR - 0.002) * k / 2 if k <= 2
          else MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * (k - 2) / 4))
          for k in range(1, 7)]
    wd = [0.05 + 0.1 * 0.5 * (1 + math.cos(math.pi * (1 - k / 6))) for k in range(1, 7)]
    check_schedule(records["cosine"], lr, wd)


def test_inverse_square_root_decay_and_constant_weight_decay(records):
    lr = [LR * k / 2 if k <= 2 else max(MIN_LR, LR * math.sqrt(2 / k)) for k in range(1, 6)]
    check_schedule(records["inverse_sqrt"], lr, [0.03] * 5)


def test_wsd_holds_then_decays_over_its_last_iterations(records):
    # No warmup: lr holds to iteration 3, then decays linearly to min-lr over iterations 4-6
    # (a third of the way is where linear and cosine differ).
    lr = [LR, LR, LR, MIN_LR + (LR - MIN_LR) * 2 / 3, MIN_LR + (LR - MIN_LR) / 3, MIN_LR]
    check_schedule(records["wsd"], lr, [0.01] * 6)


def test_clip_grad_scales_the_update_by_the_total_norm(records):
    record = records["clip"]
    grads = record["grads"]
    norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values()))
    assert norm > 1.0, "the batch must have a gradient well above --clip-grad 0.1"
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-5)
    scale = 0.1 / (norm + 1e-6)
    for name, grad in grads.items():
        update = record["after"][name].double() - record["before"][name].double()
        torch.testing.assert_close(update, -0.5 * scale * grad.double(), rtol=1e-4, atol=1e-7,
                                   msg=name)

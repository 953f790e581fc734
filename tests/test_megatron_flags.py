"""Megatron-LM training flags ModelLink inherits, shown by their effect: a sample-based schedule
follows the same learning-rate curve as the equivalent iteration-based one; --log-params-norm and
--log-num-zeros-in-grad add Megatron-LM's `params norm:` and `num zeros:` fields with the right
values; --skip-train only evaluates; --manual-gc collects only at its interval; --qk-layernorm
adds query/key norm weights that change the loss."""
import gc
import os
import re

import pytest
import torch

from conftest import TINY_LLAMA, run_in_one_job
from modellink.argument_errors import ArgumentError
from modellink.arguments import parse_args
from modellink.checkpoint.megatron_reader import MegatronSource
from modellink.models.families import FamilyConfigError, check_args, get_family
from modellink.training.components import build_scheduler
from modellink.training.loop import ManualGC

SCHEDULE = TINY_LLAMA + ["--lr-decay-style", "cosine", "--min-lr", "1e-4"]
ITERATIONS = ["--train-iters", "6", "--lr-decay-iters", "5", "--lr-warmup-iters", "2"]
SAMPLES = ["--train-samples", "48", "--lr-decay-samples", "40", "--lr-warmup-samples", "16"]
LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*learning rate: (\S+) \|.*lm loss: (\S+) \|")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One job: an iteration-based run that saves, the same run counted in samples (with
    --manual-gc, which must change nothing), --skip-train on the saved checkpoint, and two
    iterations with --qk-layernorm."""
    tmp = tmp_path_factory.mktemp("megatron_flags")
    ckpt = str(tmp / "ckpt")
    runs = [
        {"args": SCHEDULE + ITERATIONS + ["--save", ckpt, "--log-params-norm",
                                          "--log-num-zeros-in-grad"]},
        {"args": SCHEDULE + SAMPLES + ["--manual-gc", "--manual-gc-interval", "2"]},
        {"args": SCHEDULE + ITERATIONS + ["--load", ckpt, "--skip-train", "--eval-iters", "2"]},
        {"args": SCHEDULE + ["--train-iters", "2", "--qk-layernorm", "--save", str(tmp / "qk")]},
    ]
    result = run_in_one_job(runs, nproc=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if LINE.search(line)]
    assert len(lines) == 14, result.stdout[-3000:]
    return tmp / "ckpt", lines[:6], lines[6:12], result.stdout, lines[12:]


def _curve(lines):
    return [tuple(float(v) for v in LINE.search(line).groups()) for line in lines]


def test_sample_based_schedule_follows_the_iteration_based_curve(runs):
    _, by_iterations, by_samples, _, _ = runs
    curve = _curve(by_iterations)
    assert _curve(by_samples) == curve  # same iterations, learning rates and losses
    lrs = [lr for _, _, lr, _ in curve]
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3)  # warmup over 2
    assert lrs[2] > lrs[3] > lrs[4] == pytest.approx(1e-4) == lrs[5]  # cosine decay ends at 5


def _field(line, name):
    return float(re.search(rf"\| {name}: (\S+) \|", line).group(1))


def test_params_norm_is_the_norm_of_the_saved_weights(runs):
    ckpt, by_iterations, by_samples, _, _ = runs
    saved = torch.load(ckpt / "iter_0000006" / "mp_rank_00" / "model_optim_rng.pt",
                       map_location="cpu", weights_only=False)["model"]
    squares = sum(value.double().pow(2).sum().item() for name, value in saved.items()
                  if torch.is_tensor(value) and value.is_floating_point()
                  and "_extra_state" not in name)
    assert _field(by_iterations[-1], "params norm") == pytest.approx(squares ** 0.5, abs=2e-3)
    assert "params norm" not in by_samples[-1] and "num zeros" not in by_samples[-1]


def test_num_zeros_counts_the_untouched_embedding_rows(runs):
    _, by_iterations, _, _, _ = runs
    for line in by_iterations:
        zeros = _field(line, "num zeros")
        # Only embedding rows of tokens absent from the batch get no gradient: whole rows of 64,
        # at least the 27 rows of the vocabulary padding (100 tokens and the end-of-document
        # token padded to 128).
        assert zeros % 64 == 0 and zeros >= 27 * 64, line


def test_skip_train_only_evaluates_the_loaded_model(runs):
    ckpt, _, _, stdout, _ = runs
    third = stdout[stdout.index("skipping training"):stdout.rindex("iteration        1/")]
    assert "evaluating at iteration 6" in third
    assert len(re.findall(r"validation loss at iteration 6 \|", third)) == 1
    assert not LINE.search(third)
    assert sorted(os.listdir(ckpt)) == ["iter_0000006", "latest_checkpointed_iteration.txt"]


def test_qk_layernorm_adds_query_and_key_norms_that_change_the_loss(runs):
    ckpt, by_iterations, _, _, qk_lines = runs
    qk = ckpt.parent / "qk"
    saved = torch.load(qk / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       map_location="cpu", weights_only=False)["model"]
    norms = {name: value.shape for name, value in saved.items() if "q_layernorm" in name
             or "k_layernorm" in name}
    assert len(norms) == 2 * 4 and set(norms.values()) == {torch.Size([16])}  # head width 16
    plain = float(LINE.search(by_iterations[0]).group(4))
    assert float(LINE.search(qk_lines[0]).group(4)) != pytest.approx(plain, rel=1e-4)
    # Export as a family without query/key norms would drop them: it refuses instead.
    with pytest.raises(FamilyConfigError, match="--qk-layernorm, but --model-type-hf llama2"):
        check_args(get_family("llama2"), MegatronSource(str(qk)).args)


@pytest.mark.parametrize("flags, collections", [
    (["--manual-gc", "--manual-gc-interval", "2"], [1, 4, 5]),  # start, iterations 2, 4, 6, eval
    (["--manual-gc", "--no-manual-gc-eval"], [1, 1, 1]),  # interval 0: only at the start
])
def test_manual_gc_collects_only_when_asked(flags, collections):
    full_collections = []

    def count(phase, info):
        if phase == "start" and info["generation"] == 2:
            full_collections.append(phase)

    manual = ManualGC(parse_args(TINY_LLAMA + ["--train-iters", "6"] + flags))
    gc.callbacks.append(count)
    try:
        manual.start()
        assert not gc.isenabled()
        seen = [len(full_collections)]
        for iteration in range(1, 7):
            manual.after_iteration(iteration)
        seen.append(len(full_collections))
        manual.after_evaluation()
        seen.append(len(full_collections))
    finally:
        manual.stop()
        gc.callbacks.remove(count)
    assert seen == collections and gc.isenabled()


@pytest.mark.parametrize("iterations, samples", [
    (["--train-iters", "6", "--lr-decay-style", "WSD", "--lr-wsd-decay-iters", "3"],
     ["--train-samples", "48", "--lr-decay-style", "WSD", "--lr-wsd-decay-samples", "24"]),
    (["--train-iters", "6", "--lr-decay-iters", "5", "--lr-warmup-fraction", "0.2"],
     ["--train-samples", "48", "--lr-decay-samples", "40", "--lr-warmup-fraction", "0.2"]),
])
def test_wsd_and_warmup_fraction_schedules_match_in_samples(iterations, samples):
    by_iterations = build_scheduler(parse_args(TINY_LLAMA + iterations), _Optimizer())
    by_samples = build_scheduler(parse_args(TINY_LLAMA + samples), _Optimizer())
    assert by_samples.state_dict() == by_iterations.state_dict()
    assert by_samples.wsd_decay_steps == by_iterations.wsd_decay_steps


class _Optimizer:
    """What OptimizerParamScheduler reads and writes: the parameter groups."""
    param_groups = [{"params": []}]


@pytest.mark.parametrize("extra, message", [
    (["--train-iters", "6", "--train-samples", "48"], "--train-iters and --train-samples are"),
    (["--train-samples", "48", "--lr-decay-iters", "5"], "--lr-decay-iters needs --train-iters"),
    (["--train-iters", "6", "--lr-warmup-samples", "8"], "--lr-warmup-samples needs "
                                                        "--train-samples"),
    (["--train-samples", "4"], "--train-samples 4 is less than one global batch (8)"),
    (["--train-iters", "6", "--skip-train"], "--skip-train only evaluates"),
])
def test_mixed_units_and_skip_train_without_evaluation_are_errors(extra, message):
    with pytest.raises(ArgumentError, match=re.escape(message)):
        parse_args(TINY_LLAMA + extra)

"""Megatron-LM run flags shown by their effect, all in one two-rank job: --rampup-batch-size
grows the logged global batch size and the consumed samples step by step, starts where a run
at the start size starts, and a run resumed mid-ramp continues the ramp; --use-checkpoint-args
rebuilds the model from the checkpoint alone; --timing-log-level 0/1/2 logs (and writes to
TensorBoard) Megatron-LM's timers of that level only (the runs above use levels 0, 1, 2; timers
change no result)."""
import importlib.util
import re

import pytest

from conftest import TINY_LLAMA, run_in_one_job
from modellink.argument_errors import ArgumentError
from modellink.arguments import parse_args
from modellink.training.checkpoint.checkpointing import CheckpointError

# Two data-parallel ranks of one sample each: the ramp 4, 4, 6, 6, then 8 (an increment per 8
# samples over the first 16), 64 samples in 9 iterations as Megatron-LM counts them.
RAMP = ["--micro-batch-size", "1", "--train-samples", "64", "--rampup-batch-size", "4", "2", "16"]
BATCHES = [4, 4, 6, 6, 8, 8, 8, 8, 8]
# What a run needs besides the model: data, optimizer, schedule, dropout, device, logging.
RUN_ONLY = ["--mock-data", "--micro-batch-size", "2", "--global-batch-size", "8",
            "--lr", "1e-3", "--lr-decay-style", "constant", "--clip-grad", "1.0",
            "--attention-dropout", "0", "--hidden-dropout", "0", "--seed", "1234",
            "--device", "cpu", "--log-interval", "1", "--eval-iters", "0"]
LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\d+) \|.*"
                  r"global batch size:\s+(\d+) \| lm loss: (\S+) \|")
TIMER = re.compile(r"^\s{4}(\S+) \.+: ")
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_flags")
    ckpt, tb0, tb2 = str(tmp / "ckpt"), str(tmp / "tb0"), str(tmp / "tb2")
    tensorboard = (lambda folder: ["--tensorboard-dir", folder, "--log-timers-to-tensorboard"]
                   if TENSORBOARD else [])
    runs = [  # (name, arguments), in the job's order
        ("ramp", TINY_LLAMA + RAMP + tensorboard(tb0)),
        ("first three", TINY_LLAMA + RAMP + ["--save", ckpt, "--exit-interval", "3",
                                             "--timing-log-level", "1"]),
        ("resumed", TINY_LLAMA + RAMP + ["--load", ckpt]),
        # No model flags but a wrong normalization: the checkpoint decides.
        ("checkpoint args", RUN_ONLY + RAMP + ["--load", ckpt, "--use-checkpoint-args",
                                               "--normalization", "LayerNorm"]),
        ("start size", TINY_LLAMA + ["--micro-batch-size", "1", "--global-batch-size", "4",
                                     "--train-iters", "1", "--timing-log-level", "2",
                                     "--timing-log-option", "max"] + tensorboard(tb2)),
    ]
    result = run_in_one_job([{"args": args} for _, args in runs], nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = {"ramp": 9, "first three": 3, "resumed": 6, "checkpoint args": 6, "start size": 1}
    # The last rank prints the iteration lines and the timers after them, in order.
    steps = []  # (iteration, consumed, batch size, loss, timer names logged after it)
    for line in result.stdout.splitlines():
        found = LINE.search(line)
        if found:
            it, consumed, batch, loss = found.groups()
            steps.append((int(it), int(consumed), int(batch), float(loss), set()))
        elif TIMER.match(line) and steps:
            steps[-1][4].add(TIMER.match(line).group(1))
    assert len(steps) == sum(counts.values()), result.stdout[-3000:]
    by_run, start = {}, 0
    for name, _ in runs:
        by_run[name] = steps[start:start + counts[name]]
        start += counts[name]
    return by_run, result.stdout, {"level 0": tb0, "level 2": tb2}


def test_global_batch_size_and_consumed_samples_follow_the_ramp(job):
    by_run, stdout, _ = job
    ramp = by_run["ramp"]
    assert [step[2] for step in ramp] == BATCHES
    consumed = [sum(BATCHES[:i + 1]) for i in range(len(BATCHES))]
    assert [step[1] for step in ramp] == consumed
    assert "ramped up from 4 by 2 over 16 samples to 8 (9 iterations)" in stdout


def test_first_iteration_equals_a_run_at_the_start_size(job):
    by_run, _, _ = job
    assert by_run["ramp"][0][3] == by_run["start size"][0][3]
    assert by_run["start size"][0][1:3] == (4, 4)


def test_resume_mid_ramp_continues_the_ramp(job):
    by_run, _, _ = job
    assert [s[:4] for s in by_run["first three"]] == [s[:4] for s in by_run["ramp"][:3]]
    # Iteration 4 starts at 14 consumed samples: still the 6 of the ramp, then 8.
    assert [s[:4] for s in by_run["resumed"]] == [s[:4] for s in by_run["ramp"][3:]]


def test_use_checkpoint_args_rebuilds_the_model_from_the_checkpoint(job):
    by_run, stdout, _ = job
    assert [s[:4] for s in by_run["checkpoint args"]] == [s[:4] for s in by_run["resumed"]]
    assert "--use-checkpoint-args: from " in stdout and "normalization RMSNorm" in stdout


def test_use_checkpoint_args_needs_a_checkpoint(tmp_path):
    with pytest.raises(ArgumentError, match="--use-checkpoint-args needs --load"):
        parse_args(RUN_ONLY + ["--train-iters", "1", "--use-checkpoint-args"], world_size=1)
    with pytest.raises(CheckpointError, match=r"--use-checkpoint-args: --load \S+ holds no "
                                              r"checkpoint"):
        parse_args(RUN_ONLY + ["--train-iters", "1", "--use-checkpoint-args",
                               "--load", str(tmp_path)], world_size=1)
    with pytest.raises(ArgumentError, match="required: --num-layers, --hidden-size"):
        parse_args(RUN_ONLY + ["--train-iters", "1"], world_size=1)


LEVEL_1 = {"forward-backward", "all-grads-sync", "optimizer-inner-step", "optimizer"}
LEVEL_2 = {"forward-compute", "backward-compute", "batch-generator"}


def test_timing_log_level_chooses_the_timers_logged(job):
    by_run, stdout, _ = job
    assert all(not step[4] for step in by_run["ramp"])  # level 0: the iteration time only
    for step in by_run["first three"]:  # level 1
        assert LEVEL_1 <= step[4] and not step[4] & LEVEL_2, step[4]
    assert LEVEL_1 | LEVEL_2 <= by_run["start size"][0][4]  # level 2
    assert "(min, max) time across ranks (ms):" in stdout  # --timing-log-option minmax
    assert "max time across ranks (ms):" in stdout  # max


@pytest.mark.skipif(not TENSORBOARD, reason="tensorboard is not installed")
def test_timing_log_level_chooses_the_timers_in_tensorboard(job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def timer_tags(folder):
        events = EventAccumulator(folder)
        events.Reload()
        return {tag for tag in events.Tags()["scalars"] if tag.endswith("-time")}

    _, _, folders = job
    assert timer_tags(folders["level 0"]) == {"iteration-time"}
    assert {f"{name}-time" for name in LEVEL_1 | LEVEL_2 | {"iteration"}} <= timer_tags(
        folders["level 2"])


@pytest.mark.parametrize("extra, message", [
    (["--train-iters", "3", "--rampup-batch-size", "4", "2", "16"], "needs --train-samples"),
    (["--train-samples", "64", "--rampup-batch-size", "8", "2", "16"],
     "the start must be below --global-batch-size 8"),
    (["--train-samples", "64", "--rampup-batch-size", "2", "4", "16"],
     r"minus the start \(6\) is not divisible by the increment"),
    (["--train-samples", "64", "--rampup-batch-size", "3", "1", "16"],
     "divisible by --micro-batch-size 1 x data-parallel size 2"),
    (["--train-samples", "64", "--rampup-batch-size", "4", "2"], "expected 3 arguments"),
])
def test_rampup_batch_size_errors_name_the_flag(extra, message):
    with pytest.raises(ArgumentError, match=message):
        parse_args(TINY_LLAMA + ["--micro-batch-size", "1"] + extra, world_size=2)

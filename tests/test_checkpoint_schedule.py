"""Resuming with flags that change the learning-rate schedule follows Megatron-LM: an error
naming both flags, --override-opt_param-scheduler (the flags win) or
--use-checkpoint-opt_param-scheduler (the checkpoint wins, with a warning)."""
import os
import re

import pytest

from conftest import TINY_LLAMA, run_in_one_job, run_ranks
from modellink.argument_errors import ArgumentError
from modellink.arguments import parse_args

# Linear decay to 0 over --train-iters (--lr-decay-iters unset), as in the LR-0 report.
LINEAR = TINY_LLAMA + ["--lr-decay-style", "linear"]
LR_AT = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*learning rate: (\S+) \|")


def _lr(iteration, train_iters):
    return 1e-3 * (1 - iteration / train_iters)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """One job: train 4 iterations and save, then resume to 8 under each flag."""
    tmp = tmp_path_factory.mktemp("schedule")
    ckpt = str(tmp / "ckpt")
    runs = [{"args": LINEAR + ["--train-iters", "4", "--save", ckpt]}] + [
        {"args": LINEAR + ["--train-iters", "8", "--load", ckpt, flag]}
        for flag in ("--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler")]
    result = run_in_one_job(runs, nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    lrs = [(int(i), int(n), float(lr)) for i, n, lr in LR_AT.findall(result.stdout)]
    return tmp / "ckpt", lrs[:4], lrs[4:8], lrs[8:], result


def test_first_run_decays_to_zero(resumed):
    _, first, _, _, _ = resumed
    assert [lr for _, _, lr in first] == pytest.approx([_lr(i, 4) for i in range(1, 5)])


def test_override_follows_the_new_schedule(resumed):
    _, _, override, _, result = resumed
    assert [i for i, _, _ in override] == [5, 6, 7, 8]
    assert [lr for _, _, lr in override] == pytest.approx([_lr(i, 8) for i in range(5, 9)])
    assert "following this run's learning-rate schedule" in result.stdout


def test_use_checkpoint_keeps_it_and_says_so(resumed):
    _, _, _, kept, result = resumed
    assert [lr for _, _, lr in kept] == [0.0] * 4
    assert ("keeping the checkpoint's learning-rate schedule (--use-checkpoint-opt_param-"
            "scheduler), not these flags': lr_decay_steps 32 -> 64") in result.stderr
    assert "the learning rate is --min-lr 0.0 from iteration 5 on" in result.stderr


def test_changed_schedule_without_a_flag_is_an_error(resumed):
    ckpt = resumed[0]
    before = {name: os.path.getmtime(os.path.join(root, name))
              for root, _, names in os.walk(ckpt) for name in names}
    result = run_ranks(LINEAR + ["--train-iters", "8", "--load", str(ckpt), "--save", str(ckpt)],
                       nproc=1)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "/modellink/" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith(f"error: {ckpt}/iter_0000004/mp_rank_00: these flags change "
                                f"the checkpoint's learning-rate schedule (lr_decay_steps 32 "
                                f"-> 64")
    assert "--override-opt_param-scheduler" in errors[0]
    assert "--use-checkpoint-opt_param-scheduler" in errors[0]
    assert before == {name: os.path.getmtime(os.path.join(root, name))
                      for root, _, names in os.walk(ckpt) for name in names}


def test_both_flags_are_refused():
    with pytest.raises(ArgumentError, match="mutually exclusive"):
        parse_args(TINY_LLAMA + ["--train-iters", "2", "--override-opt-param-scheduler",
                                 "--use-checkpoint-opt-param-scheduler"], world_size=1)

"""Numerics guards: NaN/Inf stops with iteration and rank; fp16 skipped steps are counted."""
import re

from conftest import TINY_LLAMA, run_ranks


def test_nan_loss_stops_naming_iteration_and_rank(tmp_path):
    # A huge learning rate overflows the weights in step 1, so step 2's loss is not finite;
    # the check is on by default, as in Megatron-LM and ModelLink.
    args = [a if a != "1e-3" else "1e30" for a in TINY_LLAMA]
    result = run_ranks(args + ["--train-iters", "5", "--clip-grad", "0"], nproc=1)
    assert result.returncode != 0
    assert "NonFiniteError: iteration 2" in result.stderr, result.stderr[-3000:]
    assert "rank 0" in result.stderr or "Rank 0" in result.stderr


def test_fp16_overflow_steps_are_skipped_and_logged(tmp_path):
    # Starting at loss scale 2**40 the fp16 grads overflow until the scale has halved enough.
    result = run_ranks(TINY_LLAMA + ["--train-iters", "3", "--fp16", "--initial-loss-scale",
                                     str(2.0**40), "--hysteresis", "1"], nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [int(n) for n in re.findall(r"number of skipped iterations: +(\d+)", result.stdout)]
    scales = [float(s) for s in re.findall(r"loss scale: ([\d.]+)", result.stdout)]
    assert len(skipped) == 3 and skipped[0] == 1, result.stdout[-2000:]
    assert scales[0] == 2.0**39  # halved once for the skipped step

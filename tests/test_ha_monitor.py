"""Training monitor: TensorBoard scalars when tensorboard is installed, a clear error if not."""
import importlib.util

import pytest

import json

from conftest import TINY_LLAMA, run_ranks
from modellink.arguments import ArgumentError, parse_args
from modellink.training.monitoring.monitor import TrainingMonitor


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed")
def test_tensorboard_has_loss_and_throughput(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    result = run_ranks(TINY_LLAMA + [
        "--train-iters", "3", "--tensorboard-dir", str(logdir), "--log-throughput",
        "--log-timers-to-tensorboard", "--timing-log-level", "1"], 1, history=tmp_path / "h.json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((tmp_path / "h.json").read_text())
    assert result.stdout.count("throughput per GPU (TFLOP/s/GPU): ") == 3
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lm loss", "throughput", "learning-rate", "grad-norm",
            "forward-backward-time", "iteration-time"} <= tags
    assert [e.value for e in events.Scalars("lm loss")] == pytest.approx(history["loss"])
    assert [e.step for e in events.Scalars("throughput")] == [1, 2, 3]


@pytest.mark.parametrize("flag", [False, True])
def test_throughput_scalar_only_with_log_throughput(tmp_path, flag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = parse_args(TINY_LLAMA + ["--train-iters", "1", "--tensorboard-dir", str(tmp_path)]
                      + (["--log-throughput"] if flag else []), world_size=1)
    monitor = TrainingMonitor(args, writes=True)
    monitor.log_iteration(1, {"lm loss": 2.0}, {"throughput": 3.0}, {})
    monitor.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert ("throughput" in events.Tags()["scalars"]) == flag


@pytest.mark.parametrize("flags,package", [
    (["--tensorboard-dir", "tb"], "tensorboard"),
    (["--wandb-project", "p", "--wandb-exp-name", "e"], "wandb"),
])
def test_missing_monitor_package_is_one_clear_error(flags, package, monkeypatch):
    # The test extras install tensorboard, so hide the package from the check instead of
    # depending on what this machine happens to lack.
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == package else real_find_spec(name, *rest))
    with pytest.raises(ArgumentError, match=f"needs the {package} package"):
        parse_args(TINY_LLAMA + ["--train-iters", "1"] + flags, world_size=1)

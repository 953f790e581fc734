"""Training monitor: TensorBoard scalars when tensorboard is installed, a clear error if not."""
import importlib.util

import pytest

from conftest import TINY_LLAMA, train_history
from modellink.arguments import ArgumentError, parse_args


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="tensorboard is not installed")
def test_tensorboard_has_loss_and_throughput(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logdir = tmp_path / "tb"
    history = train_history(tmp_path, TINY_LLAMA + [
        "--train-iters", "3", "--tensorboard-dir", str(logdir), "--log-throughput",
        "--log-timers-to-tensorboard"], nproc=1)
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"lm loss", "throughput", "learning-rate", "grad-norm",
            "forward-backward-time", "iteration-time"} <= tags
    assert [e.value for e in events.Scalars("lm loss")] == pytest.approx(history["loss"])
    assert [e.step for e in events.Scalars("throughput")] == [1, 2, 3]


@pytest.mark.parametrize("flags,package", [
    (["--tensorboard-dir", "tb"], "tensorboard"),
    (["--wandb-project", "p", "--wandb-exp-name", "e"], "wandb"),
])
def test_missing_monitor_package_is_one_clear_error(flags, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ArgumentError, match=f"needs the {package} package"):
        parse_args(TINY_LLAMA + ["--train-iters", "1"] + flags, world_size=1)

"""Every parallel layout trains the same model to the same losses and grad norms (fp32)."""
import pytest

from conftest import TINY_LLAMA, train_history

ITERS = ["--train-iters", "5"]
TIGHT = dict(rel=1e-5)

LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2"],
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "pp2_uneven": ["--pipeline-model-parallel-size", "2", "--num-layer-list", "1,3"],
    "pp2_vpp": ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"],
    "dp2": [],
    "dp2_distopt": ["--use-distributed-optimizer"],
    "dp2_distopt_overlap": ["--use-distributed-optimizer", "--overlap-grad-reduce",
                            "--overlap-param-gather"],
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train_history(tmp_path_factory.mktemp("ref"), TINY_LLAMA + ITERS, nproc=1)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(layout, reference, tmp_path):
    run = train_history(tmp_path, TINY_LLAMA + ITERS + LAYOUTS[layout], nproc=2)
    assert len(run["loss"]) == 5
    assert run["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)
    assert reference["loss"][-1] < reference["loss"][0]


MOE = ["--num-experts", "4", "--moe-router-topk", "2", "--moe-aux-loss-coeff", "0.01"]


@pytest.mark.parametrize("dispatcher", ["allgather", "alltoall"])
def test_expert_parallel_matches_single_process(dispatcher, tmp_path):
    args = TINY_LLAMA + ITERS + MOE + ["--moe-token-dispatcher-type", dispatcher]
    reference = train_history(tmp_path, args, nproc=1, name="reference")
    run = train_history(tmp_path, args + ["--expert-model-parallel-size", "2"], nproc=2)
    assert run["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)
    assert reference["loss"][-1] < reference["loss"][0]


def test_glm_rotary_trains_the_same_with_tensor_parallelism(tmp_path):
    """ChatGLM's RoPE (half of each head's channels, adjacent pairs rotated) trains, and TP=2
    reproduces one process."""
    args = TINY_LLAMA + ITERS + ["--rotary-percent", "0.5", "--rotary-interleaved",
                                 "--add-qkv-bias"]
    reference = train_history(tmp_path, args, nproc=1, name="reference")
    run = train_history(tmp_path, args + ["--tensor-model-parallel-size", "2"], nproc=2)
    assert run["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)
    assert reference["loss"][-1] < reference["loss"][0]

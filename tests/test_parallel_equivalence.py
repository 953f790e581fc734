"""Every parallel layout trains the same model to the same losses and grad norms (fp32)."""
import json

import pytest
import torch

from conftest import TINY_LLAMA, run_in_one_job, train_history

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


def _saved_model(checkpoint, rank_folder: str) -> dict:
    return torch.load(checkpoint / "iter_0000005" / rank_folder / "model_optim_rng.pt",
                      weights_only=False)["model"]


def test_tied_embeddings_train_the_same_across_pipeline_stages(tmp_path):
    """Tied input and output weights with PP=2 live on both the first and the last stage; their
    gradients must be summed across the two, so the copies stay one weight. PP=1 (DP=2, which
    reproduces one process) is the reference, in the same two-rank job."""
    tied = [a for a in TINY_LLAMA if a != "--untie-embeddings-and-output-weights"] + ITERS
    runs = {"pp1": tied, "pp2": tied + ["--pipeline-model-parallel-size", "2"]}
    result = run_in_one_job([{"args": args + ["--save", str(tmp_path / name)],
                              "history": str(tmp_path / f"{name}.json")}
                             for name, args in runs.items()], nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    pp1, pp2 = (json.loads((tmp_path / f"{name}.json").read_text()) for name in runs)
    assert pp2["loss"] == pytest.approx(pp1["loss"], **TIGHT)
    assert pp2["grad_norm"] == pytest.approx(pp1["grad_norm"], **TIGHT)
    assert pp1["loss"][-1] < pp1["loss"][0]
    single = _saved_model(tmp_path / "pp1", "mp_rank_00")
    first, last = (_saved_model(tmp_path / "pp2", f"mp_rank_00_00{stage}") for stage in (0, 1))
    assert "output_layer.weight" not in single  # one tensor serves input and output
    embedding = first["embedding.word_embeddings.weight"]
    assert torch.equal(last["output_layer.weight"], embedding)
    # Adam moves a weight up to --lr (1e-3) a step whatever the gradient's size, so near-zero
    # gradients turn fp32 rounding into ~1e-6 moves; 1e-5 is 1% of one step.
    torch.testing.assert_close(embedding, single["embedding.word_embeddings.weight"],
                               rtol=0, atol=1e-5)

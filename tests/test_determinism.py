"""`--use-deter-comp`: two runs give bit-identical losses and weights."""
import torch

from conftest import TINY_LLAMA, train_history


def test_two_deterministic_runs_are_bit_identical(tmp_path):
    args = TINY_LLAMA + ["--use-distributed-optimizer", "--train-iters", "4", "--use-deter-comp"]
    runs = [train_history(tmp_path, args + ["--save", str(tmp_path / f"ckpt{i}")], nproc=2,
                          name=f"run{i}") for i in range(2)]
    assert runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["grad_norm"] == runs[1]["grad_norm"]
    weights = [torch.load(tmp_path / f"ckpt{i}" / "iter_0000004" / "mp_rank_00" /
                          "model_optim_rng.pt", weights_only=False)["model"] for i in range(2)]
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, weights[1][name]), name

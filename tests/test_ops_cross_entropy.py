"""The CPU backend's loss at tensor-parallel size 1 (torch's cross_entropy) computes megatron-core's
vocab-parallel cross entropy, forward and backward; other cases keep megatron-core's."""
import pytest
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

from modellink.patches.cross_entropy import whole_vocab_cross_entropy


def _loss_and_grad(fn, logits, target, **kwargs):
    # megatron-core's forward overwrites its input: each side gets its own copy, on the
    # device (the CPU backend's stand-in) that its all-reduces expect.
    device = torch.cuda.current_device()
    leaf = logits.detach().clone().to(device).requires_grad_()
    loss = fn(leaf, target.to(device), **kwargs)
    loss.backward(torch.linspace(0.5, 1.5, loss.numel()).view(loss.shape).to(loss.dtype))
    return loss.detach(), leaf.grad


@pytest.mark.parametrize("dtype, tol", [(torch.float32, dict(atol=1e-6, rtol=1e-6)),
                                        (torch.bfloat16, dict(atol=2e-2, rtol=2e-2))])
def test_whole_vocab_path_matches_megatron_core(one_rank, dtype, tol):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(7, 3, 50, generator=gen)).to(dtype)
    target = torch.randint(0, 50, (7, 3), generator=gen)
    ours = whole_vocab_cross_entropy(vocab_parallel_cross_entropy)
    got = _loss_and_grad(ours, logits, target)
    want = _loss_and_grad(vocab_parallel_cross_entropy, logits, target)
    assert got[0].shape == (7, 3) and got[1].dtype == dtype
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), **tol)


def test_label_smoothing_and_split_vocabularies_keep_megatron_core(monkeypatch):
    calls = []
    ours = whole_vocab_cross_entropy(lambda *args: calls.append(args[2]) or args[0])
    logits, target = torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.long)
    monkeypatch.setattr(parallel_state, "get_tensor_model_parallel_world_size", lambda: 1)
    ours(logits, target, label_smoothing=0.1)
    monkeypatch.setattr(parallel_state, "get_tensor_model_parallel_world_size", lambda: 2)
    ours(logits, target)
    assert calls == [0.1, 0.0]


def test_the_cpu_backend_replaces_the_loss_megatron_core_calls(one_rank):
    assert tensor_parallel.vocab_parallel_cross_entropy is not vocab_parallel_cross_entropy
    assert tensor_parallel.vocab_parallel_cross_entropy.__module__ == (
        "modellink.patches.cross_entropy")

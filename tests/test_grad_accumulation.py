"""Gradient-accumulation fusion on CPU (on by default, as in Megatron-LM; off with
`--no-gradient-accumulation-fusion`): the weight gradients are the unfused path's, summed into
the DDP buffer by the linear's own backward instead of by the DDP hook."""
import pytest
import torch
from megatron.core.tensor_parallel.layers import (
    linear_with_grad_accumulation_and_async_allreduce as megatron_linear)

from conftest import TINY_LLAMA
from test_inference_generate import single_process_env
from modellink.modellink_flags import device_notes
from modellink.patches import grad_accumulation


def _weight_with_buffer():
    weight = torch.nn.Parameter(torch.randn(6, 4, dtype=torch.float64))
    weight.main_grad = torch.zeros_like(weight)
    weight.grad_added_to_main_grad = False
    return weight


def _two_microbatches(linear, weight):
    """Forward and backward twice, the DDP hook's add in between; the input gradients and the
    buffer the two backward passes leave."""
    torch.manual_seed(0)
    grads = []
    for _ in range(2):
        x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
        out = linear(x, weight, None, True, False, False)
        out.backward(torch.randn_like(out))
        if weight.grad is not None and not weight.grad_added_to_main_grad:
            weight.main_grad.add_(weight.grad)  # what megatron-core's DDP hook does
        weight.grad = None
        grads.append(x.grad)
    return grads, weight.main_grad


def test_fused_backward_accumulates_the_unfused_weight_gradient():
    unfused = _weight_with_buffer()
    fused = _weight_with_buffer()
    with torch.no_grad():
        fused.copy_(unfused)
    unfused_linear = lambda x, w, b, fusion, *rest: megatron_linear(x, w, b, False, *rest)
    want_inputs, want = _two_microbatches(unfused_linear, unfused)
    got_inputs, got = _two_microbatches(
        grad_accumulation.accumulating_linear(megatron_linear), fused)
    assert fused.grad_added_to_main_grad
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    for got_input, want_input in zip(got_inputs, want_inputs):
        torch.testing.assert_close(got_input, want_input, rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", ["bias", "sequence parallel", "no buffer", "tied embedding"])
def test_layouts_the_fusion_does_not_cover_take_the_unfused_path(case):
    calls = []

    def original(input, weight, bias, fusion, *rest):
        calls.append(fusion)
        return input @ weight.t()

    weight = _weight_with_buffer()
    if case == "no buffer":
        del weight.main_grad
    if case == "tied embedding":
        weight.zero_out_wgrad = True
    bias = torch.zeros(6, dtype=torch.float64) if case == "bias" else None
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    grad_accumulation.accumulating_linear(original)(x, weight, bias, True, False,
                                                    case == "sequence parallel")
    assert calls == [False]  # megatron-core's unfused path; its fused one needs apex


def _train(flags):
    from modellink.training.pretrain import pretrain

    with single_process_env():
        history = pretrain(TINY_LLAMA + ["--train-iters", "3"] + flags).history
    return [record.loss for record in history], [record.grad_norm for record in history]


def test_training_with_and_without_the_fusion_agrees(monkeypatch):
    backward_calls = []
    fused_backward = grad_accumulation._LinearAccumulatingWeightGrad.backward

    def counting_backward(ctx, grad_output):
        backward_calls.append(1)
        return fused_backward(ctx, grad_output)

    monkeypatch.setattr(grad_accumulation._LinearAccumulatingWeightGrad, "backward",
                        staticmethod(counting_backward))
    # Four micro-batches per step: the buffer sums gradients across them.
    fused_loss, fused_norm = _train([])
    # 4 layers x (QKV, projection, fc1, fc2) + output layer, per micro-batch and step.
    assert len(backward_calls) == 17 * 4 * 3
    backward_calls.clear()
    loss, norm = _train(["--no-gradient-accumulation-fusion"])
    assert backward_calls == []
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert fused_norm == pytest.approx(norm, rel=1e-6)


def test_turning_the_fusion_off_where_it_never_runs_is_logged():
    from argparse import Namespace

    for device in ("cuda", "npu"):
        notes = device_notes(Namespace(device=device, gradient_accumulation_fusion=False))
        assert notes and notes[0].startswith("--no-gradient-accumulation-fusion has no effect")
    assert device_notes(Namespace(device="cpu", gradient_accumulation_fusion=False)) == []
    assert device_notes(Namespace(device="cuda", gradient_accumulation_fusion=True)) == []

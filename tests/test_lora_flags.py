"""--lora-fusion: the one-GEMM base + A projection gives the unfused LoRA layer's output and
gradients (input, A, B, and W when it is trained) within fp32 rounding, for both adapter
variants; and its flag checks. --lora-register-forward-hook: behind frozen embeddings, a
recomputed block's adapters get gradients only with the hook."""
import pytest
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.arguments import ArgumentError, parse_args
from modellink.models.lora import adapter_class, register_grad_hooks


def _layer(base, fusion, bias, skip_bias_add, train_weight):
    config = TransformerConfig(num_layers=1, hidden_size=24, num_attention_heads=2,
                               use_cpu_initialization=True)
    kwargs = dict(config=config, init_method=torch.nn.init.zeros_, bias=bias,
                  skip_bias_add=skip_bias_add, is_expert=False,
                  tp_group=parallel_state.get_tensor_model_parallel_group())
    kwargs.update(gather_output=False) if base is ColumnParallelLinear else \
        kwargs.update(input_is_parallel=True)
    torch.manual_seed(0)
    layer = adapter_class(base, 4, 8, fusion)(24, 40, **kwargs)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn_like(param))  # B too: a trained adapter, not a zero one
    layer.weight.requires_grad_(train_weight)
    return layer


@pytest.mark.parametrize("base", [ColumnParallelLinear, RowParallelLinear])
@pytest.mark.parametrize("bias, skip_bias_add, train_weight", [
    (False, False, False), (True, False, True), (True, True, False)])
def test_fused_forward_and_backward_equal_unfused(one_rank, base, bias, skip_bias_add,
                                                  train_weight):
    plain, fused = (_layer(base, fusion, bias, skip_bias_add, train_weight)
                    for fusion in (False, True))
    x = torch.randn(6, 3, 24)
    grads, outputs = [], []
    for layer in (plain, fused):
        inp = x.clone().requires_grad_(True)
        out, out_bias = layer(inp)
        total = out if out_bias is None else out + out_bias
        (total * torch.linspace(-1, 1, total.shape[-1])).sum().backward()
        outputs.append((out, out_bias))
        grads.append({"input": inp.grad, **{name: p.grad for name, p in layer.named_parameters()
                                            if p.requires_grad}})
    (out_p, bias_p), (out_f, bias_f) = outputs
    torch.testing.assert_close(out_f, out_p, rtol=1e-5, atol=1e-5)
    assert (bias_p is None) == (bias_f is None)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-4)


def test_lora_fusion_flag_checks(tiny_llama):
    base = tiny_llama + ["--train-iters", "1"]
    args = parse_args(base + ["--lora-target-modules", "linear_qkv", "--lora-fusion"],
                      world_size=1)
    assert args.lora_fusion
    with pytest.raises(ArgumentError, match="--lora-fusion needs --lora-target-modules"):
        parse_args(base + ["--lora-fusion"], world_size=1)
    with pytest.raises(ArgumentError, match="--lora-fusion needs --tensor-model-parallel-size 1"):
        parse_args(base + ["--lora-target-modules", "linear_qkv", "--lora-fusion",
                           "--tensor-model-parallel-size", "2"], world_size=2)


class _FrozenEmbeddingsThenRecomputed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word_embeddings = torch.nn.Embedding(10, 8).requires_grad_(False)
        self.adapter = torch.nn.Linear(8, 8)

    def forward(self, ids):
        # megatron-core's full recompute: an autograd function of the hidden states only.
        return tensor_parallel.checkpoint(self.adapter, False, self.word_embeddings(ids))


def test_register_forward_hook_lets_recomputed_adapters_train(one_rank, tiny_llama):
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    ids = torch.arange(6).view(2, 3)
    model = _FrozenEmbeddingsThenRecomputed()
    assert not model(ids).requires_grad  # no gradient could reach the adapter
    args = parse_args(tiny_llama + ["--train-iters", "1", "--lora-target-modules", "linear_qkv"],
                      world_size=1)
    assert args.lora_register_forward_hook == ["word_embeddings", "input_layernorm"]
    assert register_grad_hooks([model], args.lora_register_forward_hook) == 1
    model(ids).sum().backward()
    assert model.adapter.weight.grad is not None and model.adapter.weight.grad.abs().sum() > 0
    assert model.word_embeddings.weight.grad is None  # still frozen

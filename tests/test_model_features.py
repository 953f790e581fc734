"""The architecture flags Gemma, Gemma 2 and Bloom need: each computes what transformers does,
is refused in combinations it does not support, and trains alike under TP + SP."""
import math
from types import SimpleNamespace

import pytest
import torch
import transformers
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from transformers.activations import ACT2FN
from transformers.models.bloom.modeling_bloom import _get_alibi_slopes, bloom_gelu_forward
from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm

from conftest import TINY_LLAMA, train_history
from modellink.arguments import ArgumentError, parse_args
from modellink.ops.activations import gelu_tanh
from modellink.ops.alibi import alibi_slopes
from modellink.ops.attention import AttentionSettings, FlashSelfAttention
from modellink.ops.norm import RMSNorm

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "2", "--train-iters", "5", "--lr", "1e-3",
        "--mock-data"]
SEQ, BATCH, HEADS, GROUPS, DIM = 12, 2, 4, 2, 8


@pytest.mark.parametrize("extra,needle", [
    (["--swiglu", "--geglu"], "--swiglu cannot be combined"),
    (["--openai-gelu", "--gelu-tanh"], "--openai-gelu is the ungated GELU"),
    (["--add-rmsnorm-offset"], "--add-rmsnorm-offset needs --normalization RMSNorm"),
    (["--embed-layernorm"], "--position-embedding-type learned_absolute"),
    (["--attn-logit-softcapping", "0"], "--attn-logit-softcapping must be > 0"),
    (["--output-logit-softcapping", "-1"], "--output-logit-softcapping must be > 0"),
    (["--query-pre-attn-scalar", "0"], "--query-pre-attn-scalar must be > 0"),
    (["--attn-logit-softcapping", "50", "--use-flash-attn"], "drop --use-flash-attn"),
    (["--interleave-sliding-window", "8", "--sliding-window", "4"], "mutually exclusive"),
    (["--interleave-sliding-window", "1"], "--interleave-sliding-window must be >= 2"),
    (["--position-embedding-type", "learned"], "invalid choice"),
])
def test_bad_feature_flags_give_one_line_error(extra, needle):
    with pytest.raises(ArgumentError, match=needle.replace("+", r"\+")) as err:
        parse_args(BASE + extra, world_size=1)
    assert "\n" not in str(err.value)


def test_interleaved_window_becomes_a_per_layer_window():
    args = parse_args(BASE + ["--interleave-sliding-window", "8"], world_size=1)
    assert (args.sliding_window, args.window_attn_skip_freq) == (7, 2)


def test_alibi_slopes_match_bloom():
    for heads in (1, 3, 4, 6, 16, 24, 112):
        assert torch.equal(alibi_slopes(heads), _get_alibi_slopes(heads, torch.device("cpu")))


def test_activations_match_transformers():
    x = torch.linspace(-6, 6, 1001)
    assert torch.equal(gelu_tanh(x), ACT2FN["gelu_pytorch_tanh"](x))
    assert torch.allclose(gelu_tanh(x), bloom_gelu_forward(x), atol=1e-6)


def test_zero_centered_rmsnorm_matches_gemma():
    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=1,
                               layernorm_zero_centered_gamma=True)
    ours, theirs = RMSNorm(config, 16, eps=1e-6), Gemma2RMSNorm(16, eps=1e-6)
    assert torch.equal(ours.weight, torch.zeros(16))  # the identity at init, as Gemma's
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 0.5)
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-6)


def _attention(path, layer=1, tp=(0, 1), window=None, skip=None, **settings):
    """A rank of `tp` = (rank, size) holds HEADS of HEADS * size heads."""
    config = TransformerConfig(num_layers=2, hidden_size=HEADS * DIM * tp[1],
                               num_attention_heads=HEADS * tp[1], num_query_groups=GROUPS * tp[1],
                               kv_channels=DIM, attention_dropout=0.0,
                               window_size=(window, 0) if window else None,
                               window_attn_skip_freq=skip)
    group = SimpleNamespace(rank=lambda: tp[0], size=lambda: tp[1])
    return FlashSelfAttention(config, layer, AttnMaskType.causal, "self",
                              pg_collection=SimpleNamespace(tp=group),
                              settings=AttentionSettings(path=path, **settings))


def _qkv(heads=HEADS, groups=GROUPS):
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(SEQ, BATCH, heads, DIM, generator=gen),
            *(torch.randn(SEQ, BATCH, groups, DIM, generator=gen) for _ in range(2)))


def _explicit(q, k, v, bias=None, softcap=None, window=None):
    """[s, b, heads, d] inputs, K/V heads repeated; bias [heads, s, s]."""
    rep = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(rep, dim=2) for t in (k, v))
    scores = torch.einsum("ibhd,jbhd->bhij", q, k) / math.sqrt(DIM)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    visible = (j <= i) & ((i - j <= window) if window is not None else True)
    probs = scores.masked_fill(~visible, -math.inf).softmax(-1)
    return torch.einsum("bhij,jbhd->ibhd", probs, v).reshape(SEQ, BATCH, -1)


@pytest.mark.parametrize("path", ["reference", "sdpa"])
def test_alibi_attention_per_tensor_parallel_rank(path):
    q, k, v = _qkv()
    slopes = alibi_slopes(2 * HEADS)  # the second of two ranks holds heads 4..7
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    want = _explicit(q, k, v, bias=slopes[HEADS:, None, None] * (j - i))
    got = _attention(path, tp=(1, 2), alibi=True)(q, k, v, None)
    assert torch.allclose(got, want, atol=1e-5)


def test_alibi_with_fewer_queries_than_keys_is_the_last_rows():
    """A KV-cache step: the queries are the last positions, biased by their distance."""
    q, k, v = _qkv()
    attention = _attention("reference", alibi=True)
    full = attention(q, k, v, None)
    step = attention(q[-3:], k, v, None)
    assert torch.allclose(step, full[-3:], atol=1e-6)


def test_softcapped_attention():
    q, k, v = (t * 4 for t in _qkv())  # scores well beyond the cap
    got = _attention("reference", softcap=2.0)(q, k, v, None)
    assert torch.allclose(got, _explicit(q, k, v, softcap=2.0), atol=1e-5)
    assert not torch.allclose(got, _explicit(q, k, v), atol=1e-3)


def test_window_applies_to_odd_layers_only():
    q, k, v = _qkv()
    windowed = _attention("reference", layer=1, window=3, skip=2)(q, k, v, None)
    full = _attention("reference", layer=2, window=3, skip=2)(q, k, v, None)
    assert torch.allclose(windowed, _explicit(q, k, v, window=3), atol=1e-5)
    assert torch.allclose(full, _explicit(q, k, v), atol=1e-5)


def _swap(flags, old, new):
    """TINY_LLAMA with `old` (a flag and its values) replaced by `new`."""
    start = flags.index(old[0])
    return flags[:start] + new + flags[start + len(old):]


TINY_GEMMA2 = _swap(TINY_LLAMA, ["--swiglu"], [
    "--gelu-tanh", "--add-rmsnorm-offset", "--input-embeds-norm", "--post-norm",
    "--kv-channels", "24", "--query-pre-attn-scalar", "20", "--attn-logit-softcapping", "0.5",
    "--output-logit-softcapping", "5", "--interleave-sliding-window", "8"])
TINY_BLOOM = _swap(_swap(_swap(TINY_LLAMA, ["--normalization", "RMSNorm", "--swiglu"], [
    "--normalization", "LayerNorm", "--openai-gelu", "--embed-layernorm"]),
    ["--position-embedding-type", "rope"], ["--position-embedding-type", "alibi"]),
    ["--disable-bias-linear", "--untie-embeddings-and-output-weights"], [])


@pytest.mark.parametrize("flags", [TINY_GEMMA2, TINY_BLOOM], ids=["gemma2", "bloom"])
def test_family_features_train_alike_with_tensor_and_sequence_parallelism(flags, tmp_path):
    args = flags + ["--train-iters", "4"]
    reference = train_history(tmp_path, args, nproc=1, name="reference")
    run = train_history(tmp_path, args + ["--tensor-model-parallel-size", "2",
                                          "--sequence-parallel"], nproc=2)
    assert run["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert reference["loss"][-1] < reference["loss"][0]


def test_gemma2_without_a_window_exports_a_window_over_every_position():
    """Gemma 2's config.json cannot switch the window off; one over every position is none."""
    from modellink.models.families import get_family, hf_config_from_args, training_flags
    settings = get_family("gemma2")
    hf = transformers.Gemma2Config(vocab_size=250, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=64).to_dict()
    flags = training_flags(settings, hf)
    window = flags.index("--interleave-sliding-window")
    run = ["--micro-batch-size", "1", "--train-iters", "0", "--lr", "0", "--mock-data"]
    args = parse_args(flags[:window] + flags[window + 2:] + run, world_size=1)
    config = hf_config_from_args(settings, args, 250)
    assert config["sliding_window"] == 64 and config["final_logit_softcapping"] == 30.0
    model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma2Config(**config))
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 250)

"""Each operator's CPU choice matches its reference, forward and backward (fp32 tight, bf16 within
BF16 below); attention's windows and packed-sample masks match an explicit mask."""
import math

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.ops.attention import (
    AttentionSettings,
    FlashSelfAttention,
    attention_window,
    select_attention_path,
)
from modellink.ops.norm import rms_norm_reference, select_rms_norm
from modellink.ops.rotary import select_rotary
from modellink.ops.swiglu import select_swiglu

FP32 = dict(atol=1e-5, rtol=1e-5)
BF16 = dict(atol=2e-2, rtol=2e-2)  # documented bf16 tolerance: a few bf16 ulps of O(1) values


def _forward_backward(fn, *inputs, grad_seed=0):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    out.backward(grad)
    return [out.detach()] + [leaf.grad for leaf in leaves]


def _assert_close(got, want, tol):
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), **tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32), (torch.bfloat16, BF16)])
def test_rmsnorm_cpu_path_matches_reference(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 64, generator=gen).to(dtype)
    w = (torch.rand(64, generator=gen) + 0.5).to(dtype)
    impl = select_rms_norm("cpu", True)
    assert impl.name == "rmsnorm autograd function"
    _assert_close(_forward_backward(lambda a, b: impl.fn(a, b, 1e-5), x, w),
                  _forward_backward(lambda a, b: rms_norm_reference(a, b, 1e-5), x, w), tol)


def test_rmsnorm_cpu_backward_takes_strided_inputs_and_gradients():
    """The backward reshapes grad * x into rows: a transposed input and gradient must still give
    the reference's gradients."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 48, generator=gen).transpose(0, 1)
    w = torch.rand(48, generator=gen) + 0.5
    grad = torch.randn(3, 5, 48, generator=gen).transpose(0, 1)
    assert not x.is_contiguous() and not grad.is_contiguous()
    results = []
    for fn in (select_rms_norm("cpu", True).fn, rms_norm_reference):
        leaves = [x.detach().requires_grad_(), w.detach().clone().requires_grad_()]
        fn(*leaves, 1e-5).backward(grad)
        results.append([leaf.grad for leaf in leaves])
    _assert_close(results[0], results[1], FP32)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32), (torch.bfloat16, BF16)])
def test_swiglu_cpu_path_matches_reference(dtype, tol):
    x = torch.randn(5, 2, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    fused, reference = select_swiglu("cpu", True), select_swiglu("cpu", False)
    assert reference.name == "reference"
    _assert_close(_forward_backward(fused.fn, x), _forward_backward(reference.fn, x), tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32), (torch.bfloat16, BF16)])
@pytest.mark.parametrize("rot_dim, mscale", [(16, 1.0), (8, 1.23)])  # full and partial rotary
def test_rotary_cpu_path_matches_reference(dtype, tol, rot_dim, mscale):
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(12, 2, 4, 16, generator=gen).to(dtype)
    angles = torch.arange(12.0)[:, None] * torch.rand(rot_dim // 2, generator=gen)[None, :]
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]
    fused, reference = select_rotary("cpu", True), select_rotary("cpu", False)
    _assert_close(_forward_backward(lambda x: fused.fn(x, freqs, mscale), t),
                  _forward_backward(lambda x: reference.fn(x, freqs, mscale), t), tol)


@pytest.mark.parametrize("rot_dim", [16, 8])
def test_rotary_cpu_path_is_bit_identical_in_fp32_and_laid_out_for_sdpa(rot_dim):
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(12, 2, 4, 16, generator=gen)
    angles = torch.arange(12.0)[:, None] * torch.rand(rot_dim // 2, generator=gen)[None, :]
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]
    fused, reference = select_rotary("cpu", True), select_rotary("cpu", False)
    got = _forward_backward(lambda x: fused.fn(x, freqs, 1.0), t)
    want = _forward_backward(lambda x: reference.fn(x, freqs, 1.0), t)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    # [s, b, heads, d] seen as SDPA's [b, heads, s, d] needs no copy.
    assert fused.fn(t, freqs, 1.0).permute(1, 2, 0, 3).is_contiguous()
    with torch.no_grad():
        assert torch.equal(fused.fn(t, freqs, 1.0), reference.fn(t, freqs, 1.0))


# ---------------------------------------------------------------- attention

SEQ, BATCH, HEADS, GROUPS, DIM = 16, 2, 4, 2, 16


def explicit_mask_attention(q, k, v, scale, allowed):
    """Independent math: repeat K/V per head, mask with a [b, sq, skv] allowed-matrix."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("sbnd,tbnd->bnst", q.float(), k.float()) * scale
    scores = scores.masked_fill(~allowed[:, None], -math.inf)
    out = torch.einsum("bnst,tbnd->sbnd", scores.softmax(-1), v.float())
    return out.reshape(q.shape[0], q.shape[1], -1)


def allowed_matrix(window=None, doc_starts=None):
    """[b, s, s] booleans built element by element: causal, window, same packed document."""
    allowed = torch.zeros(BATCH, SEQ, SEQ, dtype=torch.bool)
    for b in range(BATCH):
        starts = (doc_starts or {}).get(b, [0])
        doc = [max(s for s in starts if s <= i) for i in range(SEQ)]
        for i in range(SEQ):
            for j in range(i + 1):
                near = window is None or i - j <= window
                allowed[b, i, j] = near and doc[i] == doc[j]
    return allowed


def megatron_mask(allowed):
    """The [b, 1, s, s] mask megatron-core's dataset builds (True = masked out)."""
    return ~allowed[:, None]


def make_attention(path, window=None, groups=GROUPS, **settings):
    config = TransformerConfig(num_layers=1, hidden_size=HEADS * DIM, num_attention_heads=HEADS,
                               num_query_groups=groups, kv_channels=DIM, attention_dropout=0.0,
                               window_size=(window, 0) if window is not None else None)
    return FlashSelfAttention(config, 1, AttnMaskType.causal, "self",
                              settings=AttentionSettings(path=path, **settings))


def qkv(dtype=torch.float32, groups=GROUPS, seed=3):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(SEQ, BATCH, HEADS, DIM, generator=gen)
    k, v = (torch.randn(SEQ, BATCH, groups, DIM, generator=gen) for _ in range(2))
    return [t.to(dtype) for t in (q, k, v)]


CASES = {
    "causal": dict(),
    "window": dict(window=3),
    "packed": dict(doc_starts={0: [0, 5, 11], 1: [0, 9]}),
    "packed+window": dict(window=2, doc_starts={0: [0, 7], 1: [0, 3, 4]}),
}


@pytest.mark.parametrize("path", ["sdpa", "reference"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("groups", [GROUPS, HEADS])  # GQA and plain multi-head
def test_attention_matches_explicit_mask(path, case, groups):
    window, starts = CASES[case].get("window"), CASES[case].get("doc_starts")
    allowed = allowed_matrix(window, starts)
    mask = megatron_mask(allowed) if starts else None
    module = make_attention(path, window, groups)
    scale = 1 / math.sqrt(DIM)
    got = _forward_backward(lambda q, k, v: module(q, k, v, mask), *qkv(groups=groups))
    want = _forward_backward(lambda q, k, v: explicit_mask_attention(q, k, v, scale, allowed),
                             *qkv(groups=groups))
    _assert_close(got, want, FP32)


@pytest.mark.parametrize("path", ["sdpa", "reference"])
def test_attention_bf16_within_tolerance(path):
    allowed = allowed_matrix(3, {0: [0, 6]})
    module = make_attention(path, 3)
    got = _forward_backward(lambda q, k, v: module(q, k, v, megatron_mask(allowed)),
                            *qkv(torch.bfloat16))
    want = _forward_backward(
        lambda q, k, v: explicit_mask_attention(q, k, v, 1 / math.sqrt(DIM), allowed), *qkv())
    _assert_close(got, want, BF16)


def test_packed_documents_do_not_see_each_other():
    """A document packed after another gives the output it gives alone."""
    q, k, v = qkv()
    allowed = allowed_matrix(doc_starts={0: [0, 6], 1: [0, 6]})
    module = make_attention("sdpa")
    packed = module(q, k, v, megatron_mask(allowed))
    alone = module(q[6:], k[6:], v[6:], None)
    torch.testing.assert_close(packed[6:], alone, **FP32)


@pytest.mark.parametrize("path", ["sdpa", "reference"])
@pytest.mark.parametrize("window", [None, 3])
def test_fewer_queries_than_keys_are_the_last_positions(path, window):
    """A KV-cache step (1 or 5 new queries over all keys) gives the full pass's last rows."""
    q, k, v = qkv()
    module = make_attention(path, window)
    full = module(q, k, v, None)
    for new in (1, 5):
        torch.testing.assert_close(module(q[-new:], k, v, None), full[-new:], **FP32)


def test_window_semantics_match_megatron_and_npu_band(monkeypatch):
    # --sliding-window W: query i sees keys i-W..i, as megatron-core's window_size=(W, 0),
    # flash-attn's window_size=(W, 0) and npu_fusion_attention's pre_tockens=W.
    from megatron.core.transformer import utils

    ones = torch.ones
    monkeypatch.setattr(torch, "ones", lambda *a, **kw: ones(*a, **{**kw, "device": "cpu"}))
    masked = utils.get_sliding_window_causal_mask(SEQ, SEQ, (3, 0))
    monkeypatch.undo()
    assert torch.equal(masked, ~allowed_matrix(3)[0])
    assert attention_window(3, 0, 65536, SEQ) == 3
    assert attention_window(None, 0, 5, SEQ) == 5  # --pre-tockens is a band in modes 0 and 4
    assert attention_window(None, 2, 5, SEQ) is None  # modes 1-3 ignore it
    assert attention_window(None, 0, 65536, SEQ) is None  # covers the sequence


def test_attention_paths_per_device():
    assert select_attention_path("cpu", True) == "sdpa"
    assert select_attention_path("npu", True) == "npu"
    assert select_attention_path("cpu", False) == "reference"

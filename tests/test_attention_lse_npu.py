"""Ring attention's NPU block kernels (attention_lse_kernels.py: npu_fusion_attention and
npu_fusion_attention_grad) against the stand-in torch_npu (tests/npu_stub), which checks the
documented arguments and computes the documented math: full and causal blocks, with and without
GQA, equal attention_lse's reference math, and their backward, given the merged (global) output
and log-sum-exp, gives the whole attention's gradients. No NPU ran these."""
import math
import types

import pytest
import torch

from modellink.ops import attention_lse
from modellink.ops.attention_lse import attention_block, attention_block_backward, merge_into
from modellink.ops.attention_lse_kernels import _npu_mask, fused_kernel
from test_npu_stub_signatures import SIGNATURES
from test_ops_npu_dispatch import npu  # noqa: F401  (the stand-in torch_npu fixture)

BATCH, HEADS, DIM, ROWS = 2, 4, 16, 8  # npu_fusion_attention wants head dims in multiples of 16
SCALE = 1 / math.sqrt(DIM)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture
def npu_blocks(npu, monkeypatch):  # noqa: F811
    """Full and causal blocks on the npu kernels, as on an NPU device (CPU tensors here)."""
    monkeypatch.setattr(attention_lse, "fused_kernel", lambda device, dtype: "npu")
    return npu


def _inputs(groups: int, keys: int):
    """q [b, heads, ROWS, d] and k, v, [b, groups, keys, d] as views of [s, b, n, d] tensors
    (how the ring hands them over), and the output's gradient."""
    gen = torch.Generator().manual_seed(groups * 100 + keys)
    q = torch.randn(ROWS, BATCH, HEADS, DIM, generator=gen).permute(1, 2, 0, 3)
    k, v = (torch.randn(keys, BATCH, groups, DIM, generator=gen).permute(1, 2, 0, 3)
            for _ in range(2))
    return q, k, v, torch.randn(q.shape, generator=gen)


@pytest.mark.parametrize("groups", [HEADS, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("kind", ["full", "causal"])
def test_npu_block_equals_reference(npu_blocks, kind, groups):
    q, k, v, grad = _inputs(groups, ROWS)
    visible = torch.ones(1, ROWS, ROWS, dtype=torch.bool)
    if kind == "causal":
        visible = visible.tril()
    out, lse = attention_block(q, k, v, kind, None, SCALE)
    want_out, want_lse = attention_block(q, k, v, "masked", visible, SCALE)
    torch.testing.assert_close(out, want_out, **TOLERANCE)
    torch.testing.assert_close(lse, want_lse, **TOLERANCE)
    grads = attention_block_backward(grad, q, k, v, out, lse, kind, None, SCALE)
    want = attention_block_backward(grad, q, k, v, want_out, want_lse, "masked", visible, SCALE)
    for got, expected in zip(grads, want):
        torch.testing.assert_close(got, expected, **TOLERANCE)
    (_, forward), (_, backward) = npu_blocks.calls
    assert forward["sparse_mode"] == backward["sparse_mode"] == (2 if kind == "causal" else 0)
    assert forward["layout"] == "BNSD" and forward["key"] == (BATCH, groups, ROWS, DIM)


@pytest.mark.parametrize("groups", [HEADS, 2], ids=["mha", "gqa"])
def test_npu_blocks_merge_to_whole_attention(npu_blocks, groups):
    """A ring step's pair of blocks (earlier keys: full; the same positions: causal) merged by
    log-sum-exp, and their backward shares from the merged output and lse, equal the reference
    math over all keys at once: the grad reads the global lse as softmax_max (softmax_sum 1)."""
    q, k, v, grad = _inputs(groups, 2 * ROWS)
    visible = torch.cat([torch.ones(1, ROWS, ROWS, dtype=torch.bool),
                         torch.ones(1, ROWS, ROWS, dtype=torch.bool).tril()], dim=-1)
    blocks = [("full", slice(0, ROWS)), ("causal", slice(ROWS, 2 * ROWS))]
    out = torch.zeros(q.shape)
    lse = torch.full(q.shape[:-1], -math.inf)
    for kind, cols in blocks:
        merge_into(out, lse, *attention_block(q, k[:, :, cols], v[:, :, cols], kind, None, SCALE))
    want_out, want_lse = attention_block(q, k, v, "masked", visible, SCALE)
    torch.testing.assert_close(out, want_out, **TOLERANCE)
    torch.testing.assert_close(lse, want_lse, **TOLERANCE)
    grad_q, grad_k, grad_v = torch.zeros(q.shape), torch.zeros(k.shape), torch.zeros(v.shape)
    for kind, cols in blocks:
        dq, dk, dv = attention_block_backward(grad, q, k[:, :, cols], v[:, :, cols], out, lse,
                                              kind, None, SCALE)
        grad_q += dq
        grad_k[:, :, cols] += dk
        grad_v[:, :, cols] += dv
    want = attention_block_backward(grad, q, k, v, want_out, want_lse, "masked", visible, SCALE)
    for got, expected in zip((grad_q, grad_k, grad_v), want):
        torch.testing.assert_close(got, expected, **TOLERANCE)
    assert [name for name, _ in npu_blocks.calls].count("npu_fusion_attention_grad") == 2


def test_kernel_choice_by_device_kind_and_dtype():
    """Full and causal blocks take the device's fused kernel; masked ones the reference math;
    the CPU choice is the same for every dtype."""
    def device(kind: str):  # torch.device("npu") needs the real torch_npu to register the name
        return types.SimpleNamespace(type=kind)

    for dtype in (torch.float32, torch.bfloat16):
        assert fused_kernel(torch.device("cpu"), dtype) == "cpu-flash"
        assert fused_kernel(device("npu"), dtype) == "npu"
        assert fused_kernel(device("mps"), dtype) == ""
        for kind in ("full", "causal"):
            assert attention_lse.block_kernel(device("npu"), kind, dtype) == "npu"
        assert attention_lse.block_kernel(device("npu"), "masked", dtype) == "reference"
    assert fused_kernel(device("cuda"), torch.float32) == "cuda-efficient"


@pytest.mark.parametrize("causal", [False, True])
def test_npu_mask_arguments_are_published_parameters(causal):
    """The mask keywords handed to both kernels as **keywords are in their signatures."""
    args = set(_npu_mask(causal, torch.device("cpu")))
    for name in ("npu_fusion_attention", "npu_fusion_attention_grad"):
        assert args <= {p for p, _, _ in SIGNATURES[name]}

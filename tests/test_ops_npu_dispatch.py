"""NPU paths against a stand-in torch_npu (tests/npu_stub) that asserts the documented argument
shapes, dtypes and layouts and computes the same math. No NPU ran these."""
import importlib.util
import json
import math
import sys

import pytest
import torch

from conftest import ROOT
from modellink.ops.norm import rms_norm_reference, select_rms_norm
from modellink.ops.rotary import select_rotary
from modellink.ops.swiglu import select_swiglu
from ops_probe import run_probe
from test_ops_kernels import (
    BF16,
    FP32,
    GROUPS,
    HEADS,
    SEQ,
    _assert_close,
    _forward_backward,
    allowed_matrix,
    explicit_mask_attention,
    make_attention,
    megatron_mask,
    qkv,
)


@pytest.fixture
def npu(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "torch_npu", ROOT / "tests" / "npu_stub" / "torch_npu" / "__init__.py")
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    monkeypatch.setitem(sys.modules, "torch_npu", stub)
    return stub


@pytest.mark.parametrize("dtype, tol", [(torch.float32, FP32), (torch.bfloat16, BF16)])
def test_rms_norm_npu(npu, dtype, tol):
    x = torch.randn(4, 2, 64, dtype=dtype)
    w = (torch.rand(64) + 0.5).to(dtype)
    impl = select_rms_norm("npu", True)
    _assert_close(_forward_backward(lambda a, b: impl.fn(a, b, 1e-6), x, w),
                  _forward_backward(lambda a, b: rms_norm_reference(a, b, 1e-6), x, w), tol)
    assert npu.calls[0] == ("npu_rms_norm", dict(shape=(4, 2, 64), dtype=dtype, epsilon=1e-6))


def test_swiglu_npu(npu):
    x = torch.randn(3, 2, 64)[..., :48]  # non-contiguous: the kernel wants contiguous input
    impl = select_swiglu("npu", True)
    _assert_close(_forward_backward(impl.fn, x),
                  _forward_backward(select_swiglu("npu", False).fn, x), FP32)
    assert npu.calls[0][1]["dim"] == -1


def test_rotary_npu(npu):
    t = torch.randn(10, 2, 4, 16, dtype=torch.bfloat16)
    angles = torch.arange(10.0)[:, None] * torch.rand(8)[None, :]
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :]
    impl = select_rotary("npu", True)
    _assert_close(_forward_backward(lambda x: impl.fn(x, freqs, 1.1), t),
                  _forward_backward(lambda x: select_rotary("npu", False).fn(x, freqs, 1.1), t),
                  BF16)
    assert npu.calls[0][1] == dict(shape=(10, 2, 4, 16), r_shape=(10, 1, 1, 16))


@pytest.mark.parametrize("layout", ["SBH", "BSH", "BSND", "BNSD"])
@pytest.mark.parametrize("sparse_mode", [0, 1, 2, 3, 4])
def test_fusion_attention_layouts_and_modes(npu, layout, sparse_mode):
    window = 4 if sparse_mode in (0, 4) else None  # modes 1-3 take no window
    module = make_attention("npu", window, sparse_mode=sparse_mode, shape_order=layout)
    allowed = allowed_matrix(window)
    got = _forward_backward(lambda q, k, v: module(q, k, v, None), *qkv())
    want = _forward_backward(
        lambda q, k, v: explicit_mask_attention(q, k, v, 1 / math.sqrt(16), allowed), *qkv())
    _assert_close(got, want, FP32)
    call = npu.calls[0][1]
    assert call["head_num"] == HEADS and call["sparse_mode"] == sparse_mode
    # GQA: K/V reach the kernel with their own GROUPS heads, never repeated.
    kv_heads = {"SBH": call["key"][2] // 16, "BSH": call["key"][2] // 16,
                "BSND": call["key"][2], "BNSD": call["key"][1]}[layout]
    assert kv_heads == GROUPS
    assert call["mask"] == ((2048, 2048) if sparse_mode in (2, 3, 4) else (SEQ, SEQ))
    if window is not None:
        assert call["pre_tockens"] == window and call["next_tockens"] == 0


@pytest.mark.parametrize("sparse_mode, window", [(0, None), (0, 3), (2, None), (3, None),
                                                  (4, 3)])
def test_fusion_attention_decode_step(npu, sparse_mode, window):
    """Fewer queries than keys (a KV-cache step): the kernel's top-left pre/next_tockens and
    mask are shifted so the queries are the last positions."""
    q, k, v = qkv()
    module = make_attention("npu", window, sparse_mode=sparse_mode)
    full = module(q, k, v, None)
    torch.testing.assert_close(module(q[-3:], k, v, None), full[-3:], **FP32)


def test_fusion_attention_packed_samples(npu):
    allowed = allowed_matrix(2, {0: [0, 5, 11], 1: [0, 8]})
    module = make_attention("npu", 2, shape_order="BSND")
    got = _forward_backward(lambda q, k, v: module(q, k, v, megatron_mask(allowed)),
                            *qkv(torch.bfloat16))
    want = _forward_backward(
        lambda q, k, v: explicit_mask_attention(q, k, v, 1 / math.sqrt(16), allowed), *qkv())
    _assert_close(got, want, BF16)
    call = npu.calls[0][1]
    assert call["sparse_mode"] == 0 and call["mask"] == (2, 1, SEQ, SEQ)


def test_mc2_linears_two_ranks(tmp_path):
    out = tmp_path / "mc2.json"
    result = run_probe(["mc2", str(out)], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(out.read_text())
    assert errors.pop("kernels") == ["npu_all_gather_base_mm", "npu_mm_reduce_scatter_base"]
    assert max(errors.values()) < 2e-2, errors  # bf16 inputs against fp32 math

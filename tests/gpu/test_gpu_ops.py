"""Each fused path `--use-flash-attn`, `--use-fused-rmsnorm`, `--use-fused-swiglu` and
`--use-fused-rotary-pos-emb` selects on the device, run in bf16 and fp16 on that device, matches
the fp32 reference math, forward and backward, within gpu_tier.TOLERANCE; so do the `--use-mc2`
linears on two devices."""
import json
import math

import pytest
import torch

from gpu_tier import DEVICE, TOLERANCE, tier
from modellink.ops.attention import select_attention_path
from modellink.ops.norm import rms_norm_reference, select_rms_norm
from modellink.ops.rotary import select_rotary
from modellink.ops.swiglu import select_swiglu
from ops_probe import run_probe
from test_ops_kernels import (
    CASES,
    DIM,
    allowed_matrix,
    explicit_mask_attention,
    make_attention,
    megatron_mask,
    qkv,
)

pytestmark = tier()
HALF = [torch.bfloat16, torch.float16]


def _forward_backward(fn, dtype, *inputs):
    """Output and input gradients of `fn` on DEVICE in `dtype` (inputs made on the CPU, so the
    half and fp32 runs start from the same values), returned as fp32 CPU tensors."""
    leaves = [t.to(device=DEVICE, dtype=dtype).requires_grad_() for t in inputs]
    out = fn(*leaves)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    out.backward(grad.to(device=DEVICE, dtype=dtype))
    return [t.detach().float().cpu() for t in [out] + [leaf.grad for leaf in leaves]]


def _half_matches_fp32(fused, reference, dtype, *inputs):
    got = _forward_backward(fused, dtype, *inputs)
    want = _forward_backward(reference, torch.float32, *(t.to(dtype) for t in inputs))
    for name, g, w in zip(["output"] + [f"grad {i}" for i in range(len(inputs))], got, want):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", HALF)
def test_fused_rmsnorm(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 256, generator=gen)
    w = torch.rand(256, generator=gen) + 0.5
    impl = select_rms_norm(DEVICE, True)
    _half_matches_fp32(lambda a, b: impl.fn(a, b, 1e-5), lambda a, b: rms_norm_reference(a, b, 1e-5),
                       dtype, x, w)


@pytest.mark.parametrize("dtype", HALF)
def test_fused_swiglu(dtype):
    x = torch.randn(5, 2, 256, generator=torch.Generator().manual_seed(1))
    _half_matches_fp32(select_swiglu(DEVICE, True).fn, select_swiglu(DEVICE, False).fn, dtype, x)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("rot_dim, mscale", [(64, 1.0), (32, 1.23)])  # full and partial rotary
def test_fused_rotary(dtype, rot_dim, mscale):
    gen = torch.Generator().manual_seed(2)
    t = torch.randn(32, 2, 4, 64, generator=gen)
    angles = torch.arange(32.0)[:, None] * torch.rand(rot_dim // 2, generator=gen)[None, :]
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :].to(DEVICE)
    fused, reference = select_rotary(DEVICE, True), select_rotary(DEVICE, False)
    _half_matches_fp32(lambda x: fused.fn(x, freqs, mscale), lambda x: reference.fn(x, freqs, mscale),
                       dtype, t)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("case", sorted(CASES))
def test_flash_attention(dtype, case):
    """Causal batches take flash-attn (when installed) or SDPA's flash kernel; windows and packed
    samples take the masked kernels; npu_fusion_attention on an NPU."""
    window, starts = CASES[case].get("window"), CASES[case].get("doc_starts")
    allowed = allowed_matrix(window, starts).to(DEVICE)
    mask = megatron_mask(allowed) if starts else None
    module = make_attention(select_attention_path(DEVICE, True), window)
    scale = 1 / math.sqrt(DIM)
    _half_matches_fp32(lambda q, k, v: module(q, k, v, mask),
                       lambda q, k, v: explicit_mask_attention(q, k, v, scale, allowed),
                       dtype, *qkv())



@pytest.mark.parametrize("_", [pytest.param(None, marks=tier(devices=2))], ids=["two-devices"])
def test_mc2_linears(tmp_path, _):
    """The MC2 column/row-parallel linears over two devices: the stand-in torch_npu's kernels
    on CUDA tensors over NCCL (the real kernels over HCCL on an NPU) against fp32 math."""
    out = tmp_path / "mc2.json"
    result = run_probe(["mc2", str(out), DEVICE], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(out.read_text())
    errors.pop("kernels", None)
    assert max(errors.values()) < 2e-2, errors  # bf16 inputs against fp32 math

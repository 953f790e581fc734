"""Ring attention's fused block kernels (attention_lse_kernels.py) on the device: a ring step's
full and aligned-causal blocks, merged by log-sum-exp and differentiated from the merged output
and lse as the ring does, match the fp32 reference math over all keys at once, in bf16, fp16 and
fp32, within gpu_tier.TOLERANCE. On CUDA both kernels run: flash-attn's (half precision, when the
package is installed) and torch's memory-efficient one."""
import math

import pytest
import torch

from gpu_tier import DEVICE, TOLERANCE, tier
from modellink.ops import attention_lse_kernels
from modellink.ops.attention_lse import (
    attention_block,
    attention_block_backward,
    block_kernel,
    merge_into,
)

pytestmark = tier()
BATCH, HEADS, ROWS, DIM = 2, 8, 128, 64
SCALE = 1 / math.sqrt(DIM)


def _ring_step(q, k, v, grad, blocks, dtype):
    """(out, lse, dQ, dK, dV) as float32 CPU tensors of the blocks [(kind, key columns,
    visible)] merged, each block's backward taking the merged output (in `dtype`, as the ring
    hands it over) and lse."""
    out = torch.zeros(q.shape, device=q.device)
    lse = torch.full(q.shape[:-1], -math.inf, device=q.device)
    for kind, cols, visible in blocks:
        merge_into(out, lse, *attention_block(q, k[:, :, cols], v[:, :, cols], kind, visible,
                                              SCALE))
    out = out.to(dtype)
    grads = [torch.zeros(t.shape, device=t.device) for t in (q, k, v)]
    for kind, cols, visible in blocks:
        dq, dk, dv = attention_block_backward(grad, q, k[:, :, cols], v[:, :, cols], out, lse,
                                              kind, visible, SCALE)
        grads[0] += dq
        grads[1][:, :, cols] += dk
        grads[2][:, :, cols] += dv
    return [t.float().cpu() for t in [out, lse] + grads]


@pytest.mark.parametrize("groups", [HEADS, 2], ids=["mha", "gqa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("flash_attn", [False, True], ids=["no-flash-attn", "flash-attn"])
def test_fused_blocks_match_reference(monkeypatch, flash_attn, dtype, groups):
    if flash_attn and not (DEVICE == "cuda" and dtype != torch.float32
                           and attention_lse_kernels.flash_attn_available()):
        pytest.skip("flash-attn runs fp16/bf16 blocks on CUDA, where it is installed")
    if not flash_attn:
        monkeypatch.setattr(attention_lse_kernels, "flash_attn_available", lambda: False)
    gen = torch.Generator().manual_seed(groups)
    # [s, b, n, d] tensors viewed as [b, n, s, d], as the ring hands them over
    q = torch.randn(ROWS, BATCH, HEADS, DIM, generator=gen).permute(1, 2, 0, 3)
    k, v = (torch.randn(2 * ROWS, BATCH, groups, DIM, generator=gen).permute(1, 2, 0, 3)
            for _ in range(2))
    grad = torch.randn(q.shape, generator=gen)
    earlier, same = slice(0, ROWS), slice(ROWS, 2 * ROWS)
    fused = [(kind, cols, None) for kind, cols in (("full", earlier), ("causal", same))]
    visible = torch.ones(1, ROWS, 2 * ROWS, dtype=torch.bool, device=DEVICE)
    visible[..., same] = visible[..., same].tril()
    reference = [("masked", slice(0, 2 * ROWS), visible)]
    device = torch.device(DEVICE)
    expected_kernel = ("flash-attn" if flash_attn
                       else attention_lse_kernels.fused_kernel(device, dtype))
    assert expected_kernel and block_kernel(device, "causal", dtype) == expected_kernel

    half = [t.to(device=DEVICE, dtype=dtype) for t in (q, k, v, grad)]
    # the fp32 reference starts from the same (rounded) values
    want = _ring_step(*(t.float() for t in half), reference, torch.float32)
    got = _ring_step(*half, fused, dtype)
    for name, g, w in zip(["out", "lse", "dq", "dk", "dv"], got, want):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype], msg=lambda m: f"{name}: {m}")

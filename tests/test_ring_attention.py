"""Ring attention (modellink/ops/ring_attention.py) equals unsharded attention, and its block
kernels (attention_lse.py) equal the reference math.

The multi-rank check spawns one job of 4 gloo ranks (ring_attention_ranks.py) for every CP=4
and CP=2 case (two 2-rank rings side by side): each rank takes its rows of the same random
Q/K/V, runs ring_attention forward and backward with overlap off and on, and compares output
and input gradients with `reference_attention` on the whole sequence, computed here.
"""
import math
from typing import List

import pytest
import torch
import torch.multiprocessing as mp

from modellink.argument_errors import ArgumentError
from modellink.ops.attention import reference_attention, visible_mask
from modellink.ops.attention_lse import (
    attention_block,
    attention_block_backward,
    block_kernel,
    merge_into,
)
from modellink.ops.ring_attention import _schedule, ring_attention
from modellink.training.data.instruction_batch import segment_attention_mask
from ring_attention_ranks import BATCH, CASES, DIM, SCALE, TOLERANCE, Case, Job, run_rank


def _inputs(case: Case) -> List[torch.Tensor]:
    """q, k, v, the output's gradient and the attention mask (or None)."""
    gen = torch.Generator().manual_seed(case.seq * 100 + case.groups)
    q = torch.randn(case.seq, BATCH, case.heads, DIM, generator=gen)
    k, v = (torch.randn(case.seq, BATCH, case.groups, DIM, generator=gen) for _ in range(2))
    grad = torch.randn(case.seq, BATCH, case.heads * DIM, generator=gen)
    mask = None
    if case.packed:  # samples of different lengths in each row
        segments = torch.zeros(BATCH, case.seq, dtype=torch.long)
        for row, starts in enumerate([[0, 3, 9], [0, 5, 6]]):
            for start in starts:
                segments[row, start:] += 1
        mask = segment_attention_mask(segments)
    return [q, k, v, grad, mask]


def _job(name: str, case: Case) -> Job:
    """The case's inputs and reference_attention's output and gradients on the whole sequence."""
    inputs = _inputs(case)
    q, k, v, grad, mask = inputs
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    visible = visible_mask(case.seq, case.seq, case.window, mask, q.device)
    out = reference_attention(*leaves, visible, SCALE, 0.0)
    out.backward(grad)
    return name, case, inputs, [out.detach()] + [leaf.grad for leaf in leaves]


def test_ring_equals_unsharded_attention(tmp_path):
    jobs = {size: [_job(name, case) for name, case in cases.items()]
            for size, cases in CASES.items()}
    mp.spawn(run_rank, args=(str(tmp_path / "store"), jobs), nprocs=4)


# Single-process checks of the block kernels.

def _block_inputs(sq: int, skv: int, heads: int = 4, groups: int = 2) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(sq * 10 + skv)
    # [s, b, heads, d] viewed as [b, heads, s, d], as the ring hands them over
    q = torch.randn(sq, BATCH, heads, DIM, generator=gen).permute(1, 2, 0, 3)
    k, v = (torch.randn(skv, BATCH, groups, DIM, generator=gen).permute(1, 2, 0, 3)
            for _ in range(2))
    return [q, k, v, torch.randn(q.shape, generator=gen)]


def _reference_block(q, k, v, grad, visible):
    """reference_attention's output, lse and input gradients for one block ([b, heads, s, d]).
    Rows that see no key (in every batch row) are left out of it, whose softmax would be NaN:
    they get out 0, lse -inf and no gradient."""
    sq = q.shape[2]
    live = visible.any(-1).all(0)
    leaves = [t.permute(2, 0, 1, 3).clone().requires_grad_() for t in (q, k, v)]
    out = reference_attention(leaves[0][live], *leaves[1:], visible[:, None, live], SCALE, 0.0)
    out.backward(grad.permute(2, 0, 1, 3)[live].reshape(out.shape))
    full_out = torch.zeros(sq, BATCH, q.shape[1], DIM)
    full_out[live] = out.detach().view(-1, BATCH, q.shape[1], DIM)
    rep = q.shape[1] // k.shape[1]
    scores = q @ k.repeat_interleave(rep, 1).transpose(-1, -2) * SCALE
    scores = scores.masked_fill(~visible.unsqueeze(1), -math.inf)
    return ([full_out.permute(1, 2, 0, 3), torch.logsumexp(scores, -1)]
            + [leaf.grad.permute(1, 2, 0, 3) for leaf in leaves])


@pytest.mark.parametrize("kind, sq, skv", [("full", 6, 10), ("causal", 8, 8), ("masked", 6, 10)])
def test_block_matches_reference(kind, sq, skv):
    q, k, v, grad = _block_inputs(sq, skv)
    visible = torch.ones(1, sq, skv, dtype=torch.bool)  # read by the "masked" kind only
    if kind == "causal":
        visible = visible.tril()
    if kind == "masked":  # a random pattern with fully masked rows (lse -inf, out 0)
        visible = torch.rand(BATCH, sq, skv, generator=torch.Generator().manual_seed(1)) < 0.4
        visible[:, :, 0] = True
        visible[:, 2] = False
    want_out, want_lse, *want_grads = _reference_block(q, k, v, grad, visible)
    out, lse = attention_block(q, k, v, kind, visible, SCALE)
    torch.testing.assert_close(out, want_out, **TOLERANCE)
    torch.testing.assert_close(lse, want_lse, **TOLERANCE)
    grads = attention_block_backward(grad, q, k, v, out, lse, kind, visible, SCALE)
    for got, want in zip(grads, want_grads):
        assert not got.isnan().any()
        torch.testing.assert_close(got, want, **TOLERANCE)
    assert block_kernel(q.device, kind, q.dtype) == ("reference" if kind == "masked"
                                                     else "cpu-flash")


def test_fused_and_reference_kernels_agree():
    """The masked path with a full or causal pattern is the CPU fused kernel's reference."""
    q, k, v, grad = _block_inputs(8, 8)
    for kind, visible in (("full", torch.ones(1, 8, 8, dtype=torch.bool)),
                          ("causal", torch.ones(1, 8, 8, dtype=torch.bool).tril())):
        fused = attention_block(q, k, v, kind, None, SCALE)
        reference = attention_block(q, k, v, "masked", visible, SCALE)
        for got, want in zip(fused, reference):
            torch.testing.assert_close(got, want, **TOLERANCE)
        fused_grads = attention_block_backward(grad, q, k, v, *fused, kind, None, SCALE)
        reference_grads = attention_block_backward(grad, q, k, v, *reference, "masked", visible,
                                                   SCALE)
        for got, want in zip(fused_grads, reference_grads):
            torch.testing.assert_close(got, want, **TOLERANCE)


def test_merged_blocks_equal_whole_attention():
    """Two key blocks merged by log-sum-exp, and their backward shares from the merged output,
    give the whole attention's output and gradients, also for rows one block does not see."""
    q, k, v, grad = _block_inputs(6, 10)
    visible = torch.rand(1, 6, 10, generator=torch.Generator().manual_seed(2)) < 0.5
    visible[:, :, 9] = True
    visible[:, 1, :4] = False  # row 1 sees nothing in the first block
    visible[:, 3] = False  # row 3 sees nothing at all
    want_out, want_lse, *want_grads = _reference_block(q, k, v, grad, visible)
    acc_out = torch.zeros(q.shape)
    acc_lse = torch.full(q.shape[:-1], -math.inf)
    halves = [slice(0, 4), slice(4, 10)]
    for cols in halves:
        merge_into(acc_out, acc_lse, *attention_block(q, k[:, :, cols], v[:, :, cols], "masked",
                                                      visible[..., cols], SCALE))
    torch.testing.assert_close(acc_out, want_out, **TOLERANCE)
    torch.testing.assert_close(acc_lse, want_lse, **TOLERANCE)
    dq, dk, dv = torch.zeros(q.shape), torch.zeros(k.shape), torch.zeros(v.shape)
    for cols in halves:
        shares = attention_block_backward(grad, q, k[:, :, cols], v[:, :, cols], acc_out, acc_lse,
                                          "masked", visible[..., cols], SCALE)
        dq += shares[0]
        dk[:, :, cols] += shares[1]
        dv[:, :, cols] += shares[2]
    for got, want in zip((dq, dk, dv), want_grads):
        torch.testing.assert_close(got, want, **TOLERANCE)


@pytest.mark.parametrize("positions", [torch.arange(4.0), torch.arange(8).view(2, 4),
                                       torch.arange(3)], ids=["float", "2-D", "3 of 4 rows"])
def test_bad_positions_refused_before_any_transfer(positions):
    q = torch.zeros(4, 1, 2, DIM)
    with pytest.raises(ArgumentError, match="1-D integer tensor of length 4"):
        ring_attention(q, q, q, positions, group=None, scale=SCALE)


@pytest.mark.parametrize("size", [2, 4, 8])
def test_load_balanced_causal_work_is_even(size):
    """Over the layout of chunks r and 2*CP-1-r, the blocks each rank runs (skipped pairs left
    out, a causal block counted as its lower triangle) come to the same work on every rank,
    all on the unmasked and aligned-causal kernels."""
    chunk = 64
    layout = [list(range(r * chunk, (r + 1) * chunk))
              + list(range((2 * size - 1 - r) * chunk, (2 * size - r) * chunk))
              for r in range(size)]
    work = []
    for rank in range(size):
        blocks = [block for step in _schedule(layout, rank, None, False) for block in step]
        assert {block.kind for block in blocks} <= {"full", "causal"}
        shapes = [(block.rows.stop - block.rows.start, block.cols.stop - block.cols.start,
                   block.kind) for block in blocks]
        work.append(sum(n * (n + 1) // 2 if kind == "causal" else n * m for n, m, kind in shapes))
    total = 2 * size * chunk
    assert work == [total * (total + 1) // 2 // size] * size

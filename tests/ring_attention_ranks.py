"""The rank side of tests/test_ring_attention.py: the cases, each rank's rows, and what each
of the 4 spawned gloo ranks runs. A module of its own so that the ranks import torch and the
ring only: megatron-core (behind the reference attention and the CPU backend) costs every rank
seconds of import on a 2-core machine, so the reference is computed once, in the parent."""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.distributed as dist

from modellink.argument_errors import ArgumentError
from modellink.ops.ring_attention import ring_attention

BATCH, DIM = 2, 8
SCALE = 1 / math.sqrt(DIM)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


@dataclass(frozen=True)
class Case:
    seq: int
    # "balanced": chunks r and 2*CP-1-r; per rank: "chunks 0,2|1,3" or "rows 0-4,9-12|..."
    layout: str
    heads: int = 4
    groups: int = 4
    window: Optional[int] = None
    packed: bool = False  # a segment mask: samples packed into one row


CASES: Dict[int, Dict[str, Case]] = {
    2: {
        "causal": Case(16, "balanced"),
        "sliding window": Case(16, "balanced", window=5),
        "packed segments": Case(16, "balanced", packed=True),
        "gqa": Case(16, "balanced", groups=2),
        "gqa packed window": Case(16, "balanced", groups=2, window=6, packed=True),
        "chunks 0,2 | 1,3": Case(16, "chunks 0,2|1,3"),
        # 18 rows are not 2*CP chunks: rank 0 holds 0-4 and 9-12, rank 1 holds 5-8 and 13-17.
        "18 rows unbalanced": Case(18, "rows 0-4,9-12|5-8,13-17", window=7),
    },
    4: {
        "cp4 gqa causal": Case(32, "balanced", groups=2),
        "cp4 packed window": Case(32, "balanced", window=9, packed=True),
    },
}


def rank_positions(case: Case, rank: int, size: int) -> torch.Tensor:
    if case.layout == "balanced":
        chunk = case.seq // (2 * size)
        starts = [rank * chunk, (2 * size - 1 - rank) * chunk]
        return torch.cat([torch.arange(start, start + chunk) for start in starts])
    kind, spec = case.layout.split(" ")
    pieces = spec.split("|")[rank].split(",")
    if kind == "chunks":
        chunk = case.seq // (len(spec.split("|")) * len(pieces))
        return torch.cat([torch.arange(int(c) * chunk, (int(c) + 1) * chunk) for c in pieces])
    ranges = [[int(p) for p in piece.split("-")] for piece in pieces]
    return torch.cat([torch.arange(first, last + 1) for first, last in ranges])


# (name, case, [q, k, v, output gradient, attention mask or None], [out, dq, dk, dv]) on the
# whole sequence
Job = Tuple[str, Case, List[Optional[torch.Tensor]], List[torch.Tensor]]


def _ring(case: Case, group: dist.ProcessGroup, positions: torch.Tensor, q, k, v, grad, mask,
          overlap: bool) -> List[torch.Tensor]:
    leaves = [t[positions].requires_grad_() for t in (q, k, v)]
    out = ring_attention(*leaves, positions, group, scale=SCALE, window=case.window,
                         attention_mask=mask, overlap=overlap)
    out.backward(grad[positions])
    return [out.detach()] + [leaf.grad for leaf in leaves]


def _check(group: dist.ProcessGroup, job: Job) -> None:
    name, case, inputs, expected = job
    rank = dist.get_rank(group)
    positions = rank_positions(case, rank, dist.get_world_size(group))
    got = {overlap: _ring(case, group, positions, *inputs, overlap=overlap)
           for overlap in (False, True)}
    for label, plain, overlapped, full in zip(("out", "dq", "dk", "dv"), got[False], got[True],
                                              expected):
        torch.testing.assert_close(plain, full[positions], **TOLERANCE,
                                   msg=lambda m: f"{name} {label} rank {rank}: {m}")
        assert torch.equal(plain, overlapped), f"{name} {label}: overlap changes the result"


def _check_row_counts(group: dist.ProcessGroup) -> None:
    rows = 3 if dist.get_rank(group) == 0 else 5
    q = torch.zeros(rows, 1, 2, DIM)
    with pytest.raises(ArgumentError, match="different numbers of sequence rows"):
        ring_attention(q, q, q, torch.arange(rows), group, scale=SCALE)


def run_rank(rank: int, store: str, jobs: Dict[int, List[Job]]) -> None:
    """torch.multiprocessing.spawn's entry, on 4 ranks: the CP=4 jobs over all of them; the
    CP=2 jobs and the refusal of unequal row counts (raised on every rank) over the strided
    groups {0, 2} and {1, 3}, as a hybrid layout's ring groups are, both rings at once."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=4)
    try:
        pairs = [dist.new_group([0, 2]), dist.new_group([1, 3])]
        for job in jobs[4]:
            _check(dist.group.WORLD, job)
        for job in jobs[2]:
            _check(pairs[rank % 2], job)
        _check_row_counts(pairs[rank % 2])
    finally:
        dist.destroy_process_group()

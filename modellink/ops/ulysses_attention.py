"""Ulysses context parallelism (`--context-parallel-algo ulysses_cp_algo`, and the inner level
of `hybrid_cp_algo`): attention on whole rows for a share of the heads.

Each of the U ranks of a group holds some rows of the sequence with every head. One all-to-all
gives each rank every row of the group for heads/U of the heads (Q, K and V travel together in
one message), the attention runs there on rows sorted into ascending global position (the
causal load-balanced layout hands a rank two distant chunks), and a second all-to-all brings
the output rows home with all heads. torch's functional all-to-all is differentiable, so the
backward pass is the same two exchanges in reverse.

With GQA each rank needs whole K/V heads: when U does not divide the K/V heads they are
repeated (`--kv-head-repeat-before-uly-alltoall`) by the smallest factor that splits evenly
and keeps every query head on a copy of its own group's K/V head.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from modellink.argument_errors import ArgumentError

# (query, key, value, positions) -> [rows, b, heads * d]; rows in ascending global position.
InnerAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def kv_repeat_factor(heads: int, groups: int, degree: int, kv_head_repeat: bool) -> int:
    """How many copies of each K/V head the all-to-all sends (1: the heads as they are).
    `heads` and `groups` are per tensor-parallel rank."""
    if heads % degree:
        raise ArgumentError(f"--ulysses-degree-in-cp / --context-parallel-size: the Ulysses "
                            f"degree {degree} does not divide the {heads} attention heads per "
                            f"tensor-parallel rank")
    if groups % degree == 0:
        return 1
    if not kv_head_repeat:
        raise ArgumentError(f"the Ulysses degree {degree} does not divide the {groups} query "
                            f"groups per tensor-parallel rank: add "
                            f"--kv-head-repeat-before-uly-alltoall or change the degree")
    per_group = heads // groups
    # A factor dividing heads/groups keeps each query head's group a whole number of copies;
    # heads/groups itself (one K/V head per query head) always splits evenly, as degree | heads.
    return next(f for f in range(2, per_group + 1)
                if per_group % f == 0 and groups * f % degree == 0)


def _rows_to_heads(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[s, b, U, n], block j of the last-but-one dim bound for rank j -> [U*s, b, n], row
    block j from rank j."""
    s, b, degree, n = x.shape
    sent = x.permute(2, 0, 1, 3).contiguous()
    return funcol.all_to_all_single_autograd(sent, None, None, group).reshape(degree * s, b, n)


def _heads_to_rows(x: torch.Tensor, group: dist.ProcessGroup, degree: int) -> torch.Tensor:
    """The inverse: [U*s, b, n], row block j bound for rank j -> [s, b, U*n], column block j
    (rank j's heads) from rank j."""
    rows, b, n = x.shape
    received = funcol.all_to_all_single_autograd(x.contiguous(), None, None, group)
    return received.view(degree, rows // degree, b, n).permute(1, 2, 0, 3).reshape(
        rows // degree, b, degree * n)


def ulysses_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      positions: torch.Tensor, group: dist.ProcessGroup,
                      inner: InnerAttention, *, kv_head_repeat: bool) -> torch.Tensor:
    """query [s, b, heads, d], key/value [s, b, groups, d] holding the rows at global
    `positions` (int64 [s]; every rank of `group` the same s) -> [s, b, heads * d].

    `inner` gets [U*s, b, heads/U, d] and [U*s, b, groups'/U, d] with the group's rows sorted
    by position, and those sorted positions."""
    degree = dist.get_world_size(group)
    s, b, heads = query.shape[:3]
    repeat = kv_repeat_factor(heads, key.shape[2], degree, kv_head_repeat)
    if repeat > 1:
        key, value = (t.repeat_interleave(repeat, dim=2) for t in (key, value))
    shapes = [(t.shape[2] // degree, t.shape[3]) for t in (query, key, value)]
    parts = [t.reshape(s, b, degree, -1) for t in (query, key, value)]
    packed = _rows_to_heads(torch.cat(parts, dim=-1), group)

    gathered = torch.empty(degree * s, dtype=positions.dtype, device=positions.device)
    dist.all_gather_single(gathered, positions.contiguous(), group=group)
    sorted_positions, order = torch.sort(gathered)
    packed = packed.index_select(0, order)
    q, k, v = (t.reshape(degree * s, b, *shape) for t, shape in zip(
        packed.split([h * d for h, d in shapes], dim=-1), shapes))

    out = inner(q, k, v, sorted_positions)
    return _heads_to_rows(out.index_select(0, torch.argsort(order)), group, degree)

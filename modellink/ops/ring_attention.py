"""Ring attention (`--context-parallel-algo megatron_cp_algo`): context parallelism on our own
attention kernels, since megatron-core's needs Transformer Engine.

Each rank keeps its queries; keys and values go round the ring of the context-parallel group
(sent to the next rank, received from the previous one), and each block that arrives is
attended to and merged into the output by log-sum-exp (attention_lse.py). The backward goes
round the same ring once more: each block's probabilities are recomputed from the saved
global log-sum-exp, and the block's dK/dV travel with its K/V, reaching their owner one hop
after the last block. K/V keep their num_query_groups heads on the wire (GQA).

Work follows the global positions: a rank's rows are cut into runs of consecutive positions,
and each (query run, key run) pair is skipped when no query sees a key, run with the unmasked
kernel when every query sees every key, with the aligned-causal kernel when the runs are the
same positions, and through the masked path otherwise (a window cut, the batch's attention
mask, a partial overlap). With the load-balanced layout (rank r holds chunks r and 2*CP-1-r)
every rank then does the same work under a causal mask. Positions are gathered once per call,
so that every rank knows each travelling block's positions without a host sync per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from modellink.argument_errors import ArgumentError
from modellink.ops.attention_lse import attention_block, attention_block_backward, merge_into


@dataclass(frozen=True)
class _Run:
    """Rows [start, stop) of one rank, at global positions first, first + 1, ..."""
    start: int
    stop: int
    first: int


@dataclass(frozen=True)
class _Block:
    rows: slice  # this rank's query rows
    cols: slice  # the travelling block's key rows
    kind: str  # attention_lse's block kind


@dataclass(frozen=True)
class _Plan:
    rank: int
    size: int
    positions: torch.Tensor  # [size, s] every rank's positions, on the tensors' device
    steps: List[List[_Block]]  # steps[t]: the blocks against rank (rank - t) % size's K/V
    window: Optional[int]
    attention_mask: Optional[torch.Tensor]

    def visible(self, step: int, block: _Block) -> Optional[torch.Tensor]:
        """Bool [b or 1, rows, cols] for a masked block: causal, window, attention mask."""
        if block.kind != "masked":
            return None
        q = self.positions[self.rank, block.rows][:, None]
        k = self.positions[(self.rank - step) % self.size, block.cols][None, :]
        visible = k <= q
        if self.window is not None:
            visible = visible & (q - k <= self.window)
        if self.attention_mask is None:
            return visible.unsqueeze(0)
        return visible & ~self.attention_mask[:, 0, q, k].bool()


def _runs(positions: Sequence[int]) -> List[_Run]:
    runs, start = [], 0
    for row in range(1, len(positions) + 1):
        if row == len(positions) or positions[row] != positions[row - 1] + 1:
            runs.append(_Run(start, row, positions[start]))
            start = row
    return runs


def _kind(query: _Run, key: _Run, window: Optional[int], masked: bool) -> Optional[str]:
    """The block kind of a (query run, key run) pair, None when no query sees any key."""
    q_first, q_last = query.first, query.first + query.stop - query.start - 1
    k_first, k_last = key.first, key.first + key.stop - key.start - 1
    if k_first > q_last or (window is not None and q_first - k_last > window):
        return None
    if not masked:
        if k_last <= q_first and (window is None or q_last - k_first <= window):
            return "full"
        same = (k_first, k_last) == (q_first, q_last)
        if same and (window is None or q_last - q_first <= window):
            return "causal"
    return "masked"


def _schedule(all_positions: List[List[int]], rank: int, window: Optional[int],
              masked: bool) -> List[List[_Block]]:
    size = len(all_positions)
    query_runs = _runs(all_positions[rank])
    steps = []
    for step in range(size):
        blocks = []
        for key_run in _runs(all_positions[(rank - step) % size]):
            for query_run in query_runs:
                kind = _kind(query_run, key_run, window, masked)
                if kind is not None:
                    blocks.append(_Block(slice(query_run.start, query_run.stop),
                                         slice(key_run.start, key_run.stop), kind))
        steps.append(blocks)
    return steps


class _Ring:
    """Point-to-point neighbours in the ring of `group`: send to the next, receive from the
    previous rank; `post` starts a transfer and returns (requests, receive buffers)."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        rank, size = dist.get_rank(group), dist.get_world_size(group)
        self.group = group
        self.next = dist.get_global_rank(group, (rank + 1) % size)
        self.previous = dist.get_global_rank(group, (rank - 1) % size)

    def post(self, tensors: Sequence[torch.Tensor]
             ) -> Tuple[List[dist.Work], List[torch.Tensor]]:
        received = [torch.empty_like(tensor) for tensor in tensors]
        ops = [dist.P2POp(dist.isend, tensor, self.next, self.group) for tensor in tensors]
        ops += [dist.P2POp(dist.irecv, buffer, self.previous, self.group) for buffer in received]
        return dist.batch_isend_irecv(ops), received


def _wait(transfer: Tuple[List[dist.Work], List[torch.Tensor]]) -> List[torch.Tensor]:
    requests, received = transfer
    for request in requests:
        request.wait()
    return received


def _heads_first(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.permute(1, 2, 0, 3)  # [s, b, heads, d] -> [b, heads, s, d], a view


class _RingAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, query: torch.Tensor,
                key: torch.Tensor, value: torch.Tensor, plan: _Plan, ring: Optional[_Ring],
                scale: float, overlap: bool) -> torch.Tensor:
        q = _heads_first(query)
        acc_out = torch.zeros(q.shape, dtype=torch.float32, device=query.device)
        acc_lse = torch.full(q.shape[:-1], -torch.inf, dtype=torch.float32, device=query.device)
        key_value = torch.stack([key, value])  # one message per step
        for step, blocks in enumerate(plan.steps):
            last = step == plan.size - 1
            transfer = ring.post([key_value]) if overlap and not last else None
            k, v = (_heads_first(t) for t in key_value)
            for block in blocks:
                out, lse = attention_block(q[:, :, block.rows], k[:, :, block.cols],
                                           v[:, :, block.cols], block.kind,
                                           plan.visible(step, block), scale)
                merge_into(acc_out[:, :, block.rows], acc_lse[:, :, block.rows], out, lse)
            if not last:
                (key_value,) = _wait(transfer if overlap else ring.post([key_value]))
        out = acc_out.to(query.dtype)
        ctx.save_for_backward(query, key, value, out, acc_lse)
        ctx.plan, ctx.ring, ctx.scale, ctx.overlap = plan, ring, scale, overlap
        s, b, heads, dim = query.shape
        return out.permute(2, 0, 1, 3).reshape(s, b, heads * dim)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
                 ) -> Tuple[Optional[torch.Tensor], ...]:
        query, key, value, out, lse = ctx.saved_tensors
        plan, ring, scale, overlap = ctx.plan, ctx.ring, ctx.scale, ctx.overlap
        q = _heads_first(query)
        grad_out = _heads_first(grad.reshape(query.shape))
        grad_q = torch.zeros(q.shape, dtype=torch.float32, device=query.device)
        key_value = torch.stack([key, value])
        grad_key_value = torch.zeros(key_value.shape, dtype=torch.float32, device=query.device)
        for step, blocks in enumerate(plan.steps):
            last = step == plan.size - 1
            transfer = ring.post([key_value]) if overlap and not last else None
            k, v = (_heads_first(t) for t in key_value)
            grad_k, grad_v = (_heads_first(t) for t in grad_key_value)
            for block in blocks:
                rows, cols = block.rows, block.cols
                dq, dk, dv = attention_block_backward(
                    grad_out[:, :, rows], q[:, :, rows], k[:, :, cols], v[:, :, cols],
                    out[:, :, rows], lse[:, :, rows], block.kind, plan.visible(step, block), scale)
                grad_q[:, :, rows] += dq
                grad_k[:, :, cols] += dk
                grad_v[:, :, cols] += dv
            if ring is None:
                continue
            if last:  # the final hop brings each rank its own K/V's gradients
                (grad_key_value,) = _wait(ring.post([grad_key_value]))
            elif overlap:
                (key_value,) = _wait(transfer)
                (grad_key_value,) = _wait(ring.post([grad_key_value]))
            else:
                key_value, grad_key_value = _wait(ring.post([key_value, grad_key_value]))
        grad_query = grad_q.to(query.dtype).permute(2, 0, 1, 3)
        grad_key, grad_value = grad_key_value.to(key.dtype)
        return grad_query, grad_key, grad_value, None, None, None, None


def _gather_positions(positions: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[size, s] every rank's positions; ArgumentError on every rank when the counts differ."""
    size = dist.get_world_size(group)
    count = torch.full((1,), positions.shape[0], dtype=torch.int64, device=positions.device)
    counts = [torch.empty_like(count) for _ in range(size)]
    dist.all_gather(counts, count, group=group)
    counts = [int(c) for c in counts]
    if len(set(counts)) > 1:
        raise ArgumentError(f"ring attention: context-parallel ranks hold different numbers of "
                            f"sequence rows {counts}; the sequence must split evenly over "
                            f"--context-parallel-size")
    gathered = [torch.empty_like(positions) for _ in range(size)]
    dist.all_gather(gathered, positions, group=group)
    return torch.stack(gathered)


def ring_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   positions: torch.Tensor, group: dist.ProcessGroup, *, scale: float,
                   window: Optional[int] = None, attention_mask: Optional[torch.Tensor] = None,
                   overlap: bool = False) -> torch.Tensor:
    """Causal attention of this rank's rows over the whole sequence held by `group`.

    query [s, b, heads, d], key/value [s, b, groups, d], positions int [s]: the global
    positions of this rank's rows (any disjoint sets across ranks, the same s on each). A query
    at p sees a key at p' iff p' <= p, p - p' <= window when set, and attention_mask (bool
    [b or 1, 1, S, S], global indices, True = masked out) allows it. Returns [s, b, heads * d];
    differentiable in query, key and value. overlap posts the next K/V transfer before the
    current block's compute (`--use-cp-send-recv-overlap`); the results are the same.
    Kernels per device: attention_lse.block_kernel (unmasked and aligned-causal blocks on the
    device's fused kernel: torch's flash kernel for CPU, npu_fusion_attention, flash-attn or
    torch's memory-efficient kernel on CUDA; masked blocks on the reference math)."""
    rows = query.shape[0]
    if (positions.dim() != 1 or positions.shape[0] != rows
            or positions.dtype not in (torch.int32, torch.int64)):
        raise ArgumentError(f"ring attention: positions must be a 1-D integer tensor of length "
                            f"{rows} (this rank's rows), got {positions.dtype} "
                            f"{tuple(positions.shape)}")
    if key.shape[0] != rows or value.shape[0] != rows:
        raise ArgumentError(f"ring attention: query, key and value must hold the same rows, "
                            f"got {rows}, {key.shape[0]}, {value.shape[0]}")
    all_positions = _gather_positions(positions.long(), group)
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    steps = _schedule(all_positions.tolist(), rank, window, attention_mask is not None)
    plan = _Plan(rank, size, all_positions, steps, window, attention_mask)
    ring = _Ring(group) if size > 1 else None
    return _RingAttention.apply(query, key, value, plan, ring, scale, overlap)

"""Tensor-parallel split/merge of megatron-core parameters, vocab padding, expert placement.

Which axis a tensor splits along comes from the model's own modules (split_rules.py):
column-parallel tensors split along rows (the fused QKV by whole query groups, since its
groups are contiguous; SwiGLU's fc1 per half, as each rank holds [gate_shard; up_shard]),
row-parallel weights along columns; everything else is replicated.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from modellink.checkpoint.blocks import num_rows, take_rows
from modellink.checkpoint.split_rules import SplitRules

# MLA's projections (column-parallel, its down projections' outputs gathered again).
_MLA = ("linear_q_proj", "linear_q_down_proj", "linear_q_up_proj", "linear_kv_down_proj",
        "linear_kv_up_proj")
# megatron-core linear layers carry an (empty) extra state that strict loading expects.
LINEAR_MODULES = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "output_layer") + _MLA


def owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor with storage of its own: torch.save writes a view's whole storage,
    and safetensors refuses tensors that share memory."""
    if tensor.is_contiguous() and tensor.untyped_storage().nbytes() == \
            tensor.numel() * tensor.element_size() and tensor.storage_offset() == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _join(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """A fresh tensor from row blocks: one copy, which also lets the blocks' source (a file
    map) go as soon as the group is converted."""
    if len(parts) == 1:
        return parts[0].clone(memory_format=torch.contiguous_format)
    return torch.cat(list(parts), dim=0)


def split(name: str, blocks: Sequence[torch.Tensor], tp: int,
          rules: SplitRules) -> List[torch.Tensor]:
    """The `tp` shards of a tensor given as row blocks (the same object when replicated)."""
    rows, dim = num_rows(blocks), rules.dim(name)
    if dim == 1:
        full = blocks[0] if len(blocks) == 1 else torch.cat(list(blocks), dim=0)
        if tp == 1:
            return [_join([full])]
        return [owned(part) for part in torch.chunk(full, tp, dim=1)]
    if rules.halves(name):
        half = rows // 2 // tp  # each rank: its slice of gate, then its slice of up
        return [_join(take_rows(blocks, r * half, (r + 1) * half)
                      + take_rows(blocks, rows // 2 + r * half, rows // 2 + (r + 1) * half))
                for r in range(tp)]
    if dim == 0:
        step = rows // tp
        return [_join(take_rows(blocks, r * step, (r + 1) * step)) for r in range(tp)]
    return [_join(blocks)] * tp


def pad_rows(blocks: Sequence[torch.Tensor], rows: int) -> List[torch.Tensor]:
    """Row blocks padded with a zero block (Megatron's padded vocabulary) or cut to `rows`."""
    have = num_rows(blocks)
    if have >= rows:
        return take_rows(blocks, 0, rows)
    first = blocks[0]
    return list(blocks) + [torch.zeros(rows - have, *first.shape[1:], dtype=first.dtype)]


def merge(name: str, shards: List[torch.Tensor], rules: SplitRules) -> List[torch.Tensor]:
    """The full tensor of `tp` shards, as row blocks (views wherever rows line up)."""
    dim = rules.dim(name)
    if len(shards) == 1:
        return [shards[0]]
    if dim == 1:
        return [torch.cat(shards, dim=1)]
    if rules.halves(name):
        halves = [torch.chunk(shard, 2, dim=0) for shard in shards]
        return [h[0] for h in halves] + [h[1] for h in halves]
    if dim == 0:
        return list(shards)
    return [shards[0]]


def expert_owner(expert: int, num_experts: int, ep: int) -> Tuple[int, int]:
    """(expert-parallel rank, local index) of a global expert."""
    per_rank = num_experts // ep
    return expert // per_rank, expert % per_rank


def split_expert_name(rel: str) -> Tuple[str, int, str]:
    """'mlp.experts.local_experts.5.linear_fc1.weight' -> ('mlp.experts.local_experts.', 5,
    'linear_fc1.weight')."""
    head, _, tail = rel.partition("local_experts.")
    index, _, rest = tail.partition(".")
    return head + "local_experts.", int(index), rest

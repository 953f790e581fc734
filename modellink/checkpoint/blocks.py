"""Tensors as row blocks: a list of tensors meant to be concatenated along dim 0.

Converters pass canonical tensors this way so that re-slicing them (tensor-parallel shards,
fused QKV groups, gate/up halves) takes views and the final tensor is copied once.
"""
from __future__ import annotations

from typing import List, Sequence

import torch


def take_rows(blocks: Sequence[torch.Tensor], start: int, end: int) -> List[torch.Tensor]:
    """Rows [start, end) of the concatenation of `blocks`, as views."""
    out, offset = [], 0
    for block in blocks:
        rows = block.shape[0]
        lo, hi = max(start, offset), min(end, offset + rows)
        if lo < hi:
            out.append(block[lo - offset:hi - offset])
        offset += rows
    return out


def num_rows(blocks: Sequence[torch.Tensor]) -> int:
    return sum(block.shape[0] for block in blocks)


def concat(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """The concatenation; a single block comes back as it is (possibly a view)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(list(blocks), dim=0)

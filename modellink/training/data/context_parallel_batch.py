"""A micro-batch cut to this context-parallel rank's share of the sequence.

Every CP rank of a data-parallel rank reads the same samples (the sampler uses the
data-parallel rank without CP) and keeps its two chunks of tokens, labels, loss mask and
position ids (rank r: chunks r and 2*CP-1-r of 2*CP). The attention mask stays whole: it is
indexed by global positions inside attention, and megatron-core's RoPE already picks the same
chunks of its frequencies (get_pos_emb_on_this_cp_rank).
"""
from __future__ import annotations

from typing import Dict

import torch
from megatron.core import parallel_state

from modellink.ops.context_parallel import slice_for_rank

SEQUENCE_KEYS = ("tokens", "labels", "loss_mask", "position_ids")


def context_parallel_share(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`batch` unchanged without context parallelism, else this rank's chunks of it."""
    size = parallel_state.get_context_parallel_world_size()
    if size == 1:
        return batch
    rank = parallel_state.get_context_parallel_rank()
    return {key: slice_for_rank(value, 1, rank, size) if key in SEQUENCE_KEYS else value
            for key, value in batch.items()}

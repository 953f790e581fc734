"""--no-shared-storage: every node builds its own dataset index caches.

megatron-core's dataset building lets global rank 0 build the index caches (GPTDataset's
document/sample/shuffle indices, BlendedDataset's dataset indices) and write them under the
cache path, waits on a barrier, then has every other rank read them. That holds only when all
nodes see one file system; otherwise the other nodes' ranks look for files that only rank 0's
node has. ModelLink's answer, kept here: the first local rank of each node builds into its
node's own cache while that node's other ranks wait on the same barrier, then read it.

megatron-core names the builder by `torch.distributed.get_rank() == 0`, inline, in the
builder, GPTDataset and BlendedDataset, with no hook to change it; so for the duration of the
build (and only with the flag) `get_rank()` of the default group answers 0 on each node's first
local rank. The window holds the dataset build alone, before training starts any thread; the
builder's barriers do not ask for the rank, so every rank still meets them in step.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Optional

import torch


def _is_first_local_rank() -> bool:
    # torchrun's LOCAL_RANK, which also binds each process to its device.
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


@contextlib.contextmanager
def first_local_ranks_build(no_shared_storage: bool) -> Iterator[None]:
    """Within the block, megatron-core's dataset builders treat each node's first local rank
    as the rank that builds and writes index caches, when `no_shared_storage`."""
    if not no_shared_storage or not torch.distributed.is_initialized():
        yield
        return
    real_get_rank = torch.distributed.get_rank
    leader = _is_first_local_rank()

    def get_rank(group: Optional[Any] = None) -> int:
        rank = real_get_rank(group)
        return 0 if leader and group is None else rank

    torch.distributed.get_rank = get_rank
    try:
        yield
    finally:
        torch.distributed.get_rank = real_get_rank

"""Record a training step whole, so a test can recompute it without megatron-core: each
parameter before and after the update and its gradient as the optimizer receives it, gathered
over tensor parallelism into the one-process layout, and the micro-batches the step consumed.

Used by tests/launch_pretrain_runs.py for a run given "capture": PATH (tensor and data
parallelism only: with pipeline parallelism a rank holds part of the layers). The file, written
by rank 0 after every step (so it ends up holding the last one), is a torch.save of
{"before", "after", "grads": {name: tensor}, "batches": [micro-batch dicts], "loss": float}.
"""
import contextlib
from typing import Any, Dict, Iterator, List

import torch
from megatron.core import parallel_state

from modellink.training import loop


def _full(name: str, tensor: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    tensor = tensor.detach()
    group = parallel_state.get_tensor_model_parallel_group()
    if not getattr(param, "tensor_model_parallel", False) or group.size() == 1:
        return tensor.clone()
    shards = [torch.empty_like(tensor) for _ in range(group.size())]
    torch.distributed.all_gather(shards, tensor.contiguous(), group=group)
    if ".linear_fc1." in name:
        # SwiGLU: each rank holds [its gate rows; its up rows]; one process holds all gate
        # rows, then all up rows.
        halves = [shard.chunk(2, dim=0) for shard in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=param.partition_dim)


def _gathered(model: List[torch.nn.Module], grads: bool) -> Dict[str, torch.Tensor]:
    out = {}
    for chunk in model:
        for name, param in chunk.module.named_parameters():
            if grads and not param.requires_grad:
                continue
            out[name] = _full(name, param.main_grad if grads else param, param)
    return out


class _Recording:
    def __init__(self, iterator: Iterator, into: List[Dict[str, torch.Tensor]]) -> None:
        self.iterator, self.into = iterator, into

    def __iter__(self) -> "_Recording":
        return self

    def __next__(self) -> Dict[str, torch.Tensor]:
        batch = next(self.iterator)
        self.into.append({key: value.clone() for key, value in batch.items()})
        return batch


@contextlib.contextmanager
def capturing(path: str) -> Iterator[None]:
    original = loop.train_step

    def train_step(model, optimizer, scheduler, data_iterators, args, before_update=None,
                   after_update=None, forward=None):
        record: Dict[str, Any] = {"batches": []}
        iterators = [_Recording(it, record["batches"]) for it in data_iterators]

        def before() -> None:
            record["before"] = _gathered(model, grads=False)
            record["grads"] = _gathered(model, grads=True)
            if before_update is not None:
                before_update()

        def after() -> None:
            record["after"] = _gathered(model, grads=False)
            if after_update is not None:
                after_update()

        result = original(model, optimizer, scheduler, iterators, args, before, after, forward)
        if torch.distributed.get_rank() == 0:
            record["loss"] = result.loss
            torch.save(record, path)
        return result

    loop.train_step = train_step
    try:
        yield
    finally:
        loop.train_step = original

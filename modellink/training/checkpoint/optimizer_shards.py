"""`distrib_optim.pt` built from per-rank shards, with no collective.

megatron-core's `save_parameter_state` gathers every data-parallel rank's slice of the
optimizer state onto that group's rank 0, a collective that a dying gasp cannot run (peers
are blocked in another one). Instead each rank takes its own slice (`local_shards`, what it
would have sent) and one process concatenates them (`assemble`) into the object rank 0 would
have written: per gradient buffer and dtype, `param`, `exp_avg` and `exp_avg_sq` of all
buckets without their padding, then `numel_unpadded`. Built in the same order from
same-sized tensors, `torch.save` writes the same bytes. The layout is megatron-core 0.16's
`DistributedOptimizer.get_parameter_state_dp_zero` (read back by
`load_parameter_state_from_dp_zero`).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

_KEYS = ("param", "exp_avg", "exp_avg_sq")


def _gathering_optimizers(optimizer: Any) -> List[Any]:
    # A chained optimizer saves only its members that have the gather.
    members = getattr(optimizer, "chained_optimizers", [optimizer])
    return [opt for opt in members if hasattr(opt, "get_parameter_state_dp_zero")]


def local_shards(optimizer: Any) -> Dict[str, Any]:
    """This rank's slice of every distributed optimizer's state, on the CPU; reads only."""
    members = getattr(optimizer, "chained_optimizers", [optimizer])
    per_optimizer = []
    for opt in _gathering_optimizers(optimizer):
        shards = opt.data_parallel_group.size()
        buffers: Dict[int, Dict[torch.dtype, Any]] = {}
        for gbuf_idx, gbuf_range_maps in enumerate(opt.gbuf_ranges):
            buffer = opt.buffers[gbuf_idx]
            buffers[gbuf_idx] = {}
            for dtype, bucket_maps in gbuf_range_maps.items():
                buckets = []
                for bucket_idx, bucket_map in enumerate(bucket_maps):
                    bucket = buffer.buckets[bucket_idx]
                    # Plain tensors: a CPU run's device check marks host tensors with a
                    # subclass, which the checkpoint loader refuses to unpickle.
                    local = {key: torch.zeros(bucket.grad_data.numel() // shards,
                                              dtype=torch.float32).as_subclass(torch.Tensor)
                             for key in _KEYS}
                    for model_param, ranges in bucket_map["param_map"].items():
                        tensors = opt._get_main_param_and_optimizer_states(model_param)
                        start, end = ranges["gbuf_local"].start, ranges["gbuf_local"].end
                        for key in _KEYS:
                            local[key][start:end].copy_(tensors[key].detach().cpu())
                    buckets.append((bucket.numel_unpadded, local))
                buffers[gbuf_idx][dtype] = {"numel_unpadded": buffer.numel_unpadded,
                                            "buckets": buckets}
        per_optimizer.append(buffers)
    return {"single": len(members) == 1, "optimizers": per_optimizer}


def assemble(parts: List[Dict[str, Any]]) -> Any:
    """What `save_parameter_state` writes, from every shard's `local_shards` in
    data-parallel rank order."""
    states = []
    for index, buffers in enumerate(parts[0]["optimizers"]):
        state: Dict[Any, Any] = {"buckets_coalesced": True}
        for gbuf_idx, dtypes in buffers.items():
            state[gbuf_idx] = {}
            for dtype, layout in dtypes.items():
                world: Dict[str, Any] = {key: torch.zeros(layout["numel_unpadded"],
                                                          dtype=torch.float32) for key in _KEYS}
                world["numel_unpadded"] = layout["numel_unpadded"]
                for key in _KEYS:
                    offset = 0
                    for bucket_idx, (numel_unpadded, _) in enumerate(layout["buckets"]):
                        bucket = torch.cat([part["optimizers"][index][gbuf_idx][dtype]
                                            ["buckets"][bucket_idx][1][key] for part in parts])
                        world[key][offset:offset + numel_unpadded].copy_(bucket[:numel_unpadded])
                        offset += numel_unpadded
                state[gbuf_idx][dtype] = world
        states.append(state)
    return states[0] if parts[0]["single"] else states

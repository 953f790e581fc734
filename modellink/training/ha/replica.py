"""Replica optimizer (`--enable-optimizer-state-local-copy`) on megatron-core's own support.

megatron-core's `num_distributed_optimizer_instances = 2` splits the data-parallel group into
two instances: the optimizer state is sharded within an instance and each instance holds a
whole copy, so every shard lives on two ranks (intra-instance rank k of instance 0 and of
instance 1, joined by the inter-instance group). Gradients are reduce-scattered within an
instance and the shards all-reduced across instances, so both copies stay bit-identical.

On disk each instance's first rank writes its instance's gathered state: instance 0 the file
Megatron-LM reads (`distrib_optim.pt`), instance 1 `distrib_optim_replica.pt`. Either file
restores the whole optimizer, so a lost or corrupt one is recovered from the other.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, List

import torch
from megatron.core import parallel_state

REPLICA_OPTIMIZER_FILENAME = "distrib_optim_replica.pt"


def optimizer_instances(args: argparse.Namespace) -> int:
    """megatron-core's `num_distributed_optimizer_instances` for these flags."""
    return 2 if args.enable_optimizer_state_local_copy else 1


def instance_id() -> int:
    """Which optimizer instance (copy of the optimizer state) this rank belongs to."""
    group = parallel_state.get_inter_distributed_optimizer_instance_group(check_initialized=False)
    return group.rank() if group is not None else 0


def writes_optimizer_file() -> bool:
    """The rank that gathers and writes (or reads and scatters) its instance's state."""
    return parallel_state.get_data_parallel_rank(with_context_parallel=True,
                                                 partial_data_parallel=True) == 0


def optimizer_files(rank_dir: str, primary_name: str, replicated: bool) -> List[str]:
    """The optimizer state files of a checkpoint saved with (`replicated`) or without the
    replica optimizer: this instance's own file first, then the other copy's."""
    primary = os.path.join(rank_dir, primary_name)
    if not replicated:
        return [primary]
    files = [primary, os.path.join(rank_dir, REPLICA_OPTIMIZER_FILENAME)]
    return files[::-1] if instance_id() == 1 else files


@dataclass(frozen=True)
class MemoryAccount:
    """Bytes per parameter on one rank: `replicated + sharded / shards`."""
    replicated: int  # model weights and the gradient buffer, on every data-parallel rank
    sharded: int  # main-param / main-grad copies and optimizer moments, split over `shards`
    shards: int

    @property
    def per_parameter(self) -> float:
        return self.replicated + self.sharded / self.shards

    def __str__(self) -> str:
        return (f"{self.replicated} + {self.sharded}/{self.shards} = "
                f"{self.per_parameter:.2f} bytes per parameter")


def memory_account(args: argparse.Namespace, params_dtype: torch.dtype) -> MemoryAccount:
    """Megatron-LM's accounting (bf16 weights and grads, Adam: 4 + 16/d; with the replica
    the state is split over d/2 ranks: 4 + 32/d), for the dtypes these flags allocate. d is
    DP x CP: megatron-core shards the distributed optimizer over the data x context group."""
    fp32 = 4
    param = torch.tensor([], dtype=params_dtype).element_size()
    grads_fp32 = args.accumulate_allreduce_grads_in_fp32 or params_dtype == torch.float32
    grad = fp32 if grads_fp32 else param
    main_param = 0 if params_dtype == torch.float32 else fp32
    main_grad = 0 if grads_fp32 else fp32
    moments = {"adam": 2 * fp32, "sgd": fp32 if args.sgd_momentum else 0}[args.optimizer]
    sharded = main_param + main_grad + moments
    if not args.use_distributed_optimizer:
        return MemoryAccount(param + grad + sharded, 0, 1)
    shards = args.data_parallel_size * args.context_parallel_size
    return MemoryAccount(param + grad, sharded, shards // optimizer_instances(args))


def _distributed_optimizers(optimizer: Any) -> List[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _shard_tensors(optimizer: Any) -> List[torch.Tensor]:
    """This rank's main-param shards and optimizer moments, in the same order on every
    instance (the optimizers are built from identical models)."""
    tensors = []
    for opt in _distributed_optimizers(optimizer):
        for group in opt.optimizer.param_groups:
            for main_param in group["params"]:
                tensors.append(main_param.data)
                state = opt.optimizer.state.get(main_param, {})
                tensors.extend(state[key] for key in sorted(state) if torch.is_tensor(state[key]))
    return tensors


@torch.no_grad()
def restore_from_replica(optimizer: Any, source_instance: int) -> None:
    """Collective over the inter-instance group, every member passing the id of the
    instance whose copy is intact: the others' optimizer shards are overwritten with it.
    The lost state's tensors must still exist (they are allocated by the first step)."""
    group = parallel_state.get_inter_distributed_optimizer_instance_group()
    source = torch.distributed.get_global_rank(group, source_instance)
    for tensor in _shard_tensors(optimizer):
        # torch's Adam keeps `step` in host memory, which NCCL/HCCL refuse: send a device copy.
        on_device = tensor.to(torch.cuda.current_device())
        torch.distributed.broadcast(on_device, source, group=group)
        if on_device is not tensor:
            tensor.copy_(on_device)
    for opt in _distributed_optimizers(optimizer):
        # Weights in 16-bit are copies of the fp32 main params: refresh this rank's slice.
        if opt.config.fp16 or opt.config.bf16:
            opt._copy_main_params_to_model_params()


def log_memory_account(args: argparse.Namespace, params_dtype: torch.dtype) -> None:
    """The start-up line: weights, gradients and optimizer state per parameter on one rank."""
    if torch.distributed.get_rank() != 0:
        return
    kind = ("replica distributed optimizer" if args.enable_optimizer_state_local_copy
            else "distributed optimizer" if args.use_distributed_optimizer else "optimizer")
    print(f"modellink: memory per rank ({kind}): {memory_account(args, params_dtype)}",
          flush=True)

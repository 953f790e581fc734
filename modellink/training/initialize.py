"""Process start-up: backend, torch.distributed, megatron-core parallel state and seeds."""
from __future__ import annotations

import argparse
import os
import random
import socket
from datetime import timedelta

import numpy
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.num_microbatches_calculator import (
    destroy_num_microbatches_calculator,
    init_num_microbatches_calculator,
)

from modellink import backend as backends
from modellink.context_parallel_args import hierarchical_sizes
from modellink.patches import apply_patches
from modellink.training.determinism import enable_deterministic_computation
from modellink.training.ha.replica import optimizer_instances


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_single_process_env() -> None:
    # `python pretrain_gpt.py` without torchrun: a world of one on this host.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def initialize(args: argparse.Namespace) -> backends.Backend:
    """Bring up the backend and every process group the flags ask for; seed all RNGs."""
    backend = backends.resolve(args.device)
    backends.activate(backend)
    apply_patches()
    args.device = backend.device
    if args.use_deter_comp:  # before the communicator exists: HCCL reads its setting then
        enable_deterministic_computation()
    if not torch.distributed.is_initialized():
        _default_single_process_env()
        torch.distributed.init_process_group(
            backend=args.distributed_backend or backend.distributed_backend,
            timeout=timedelta(minutes=args.distributed_timeout_minutes),
        )
    if args.jit_compile:
        if backend.device == "npu":
            backends.npu.enable_jit_compile()
        elif torch.distributed.get_rank() == 0:
            print(f"modellink: --jit-compile has no effect on {backend.device} (it sets "
                  f"torch_npu's compile mode)", flush=True)
    world = torch.distributed.get_world_size()
    if world != args.world_size:
        raise RuntimeError(f"parsed arguments for world size {args.world_size}, running {world}")
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=args.virtual_pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        hierarchical_context_parallel_sizes=hierarchical_sizes(args),
        expert_model_parallel_size=args.expert_model_parallel_size,
        num_distributed_optimizer_instances=optimizer_instances(args),
        # Otherwise the TP/PP/DP/CP groups keep megatron-core's 30 minutes, whatever the flag.
        distributed_timeout_minutes=args.distributed_timeout_minutes,
    )
    init_num_microbatches_calculator(
        torch.distributed.get_rank(), args.rampup_batch_size, args.global_batch_size,
        args.micro_batch_size, args.data_parallel_size,
    )
    set_seed(args.seed)
    return backend


def set_seed(seed: int) -> None:
    # As Megatron-LM: pipeline stages get distinct streams; megatron-core derives the
    # tensor-parallel and expert streams from the same seed.
    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    """Tear down process groups so a process (or test) can initialise again."""
    destroy_num_microbatches_calculator()
    parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

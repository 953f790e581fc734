"""A checkpoint written with no collective, by the ranks that take part in a dying gasp.

Each writes its parts into the `.tmp` directory:
- its model-parallel position's `model_optim_rng.pt`, if it is the first of that position's
  data-parallel ranks taking part (they hold the same weights and optimizer settings);
- with the distributed optimizer, its shard of its optimizer instance's file, and with the
  replica optimizer also the other instance's shard it holds a copy of when that shard's
  owner does not take part.
One rank (`publish_parts`) then checks that every part of every position is there,
concatenates the shards into `distrib_optim.pt` (the bytes the collective save writes) and
publishes through `publish_checkpoint`; with any part missing it publishes nothing.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Any, Dict, List, Optional, Set

import torch
from megatron.core import parallel_state

from modellink.checkpoint.safe_load import load_pt
from modellink.training.checkpoint.checkpointing import (
    MODEL_FILENAME,
    OPTIMIZER_FILENAME,
    CheckpointError,
    model_file_state,
    position_dirname,
    publish_checkpoint,
    rank_dirname,
    save_file,
)
from modellink.training.checkpoint.optimizer_shards import assemble, local_shards
from modellink.training.ha.replica import REPLICA_OPTIMIZER_FILENAME, optimizer_instances

_PARTS_DIRNAME = "parts"


def unsupported(args: argparse.Namespace) -> Optional[str]:
    """Why this layout cannot be saved in parts, or None."""
    if args.expert_model_parallel_size > 1:
        return "expert parallelism (not tested)"
    if args.overlap_param_gather:
        # The last update's weights are still being gathered during the next step.
        return "--overlap-param-gather"
    return None


def _instance_files(args: argparse.Namespace) -> List[str]:
    return [OPTIMIZER_FILENAME, REPLICA_OPTIMIZER_FILENAME][:optimizer_instances(args)]


def _part_path(tmp_dir: str, dirname: str, filename: str, shard: int) -> str:
    return os.path.join(tmp_dir, _PARTS_DIRNAME, dirname, f"{filename}.{shard}")


def _first_alive(ranks: List[int], alive: Set[int]) -> Optional[int]:
    return next((rank for rank in ranks if rank in alive), None)


def _saves_shards(args: argparse.Namespace) -> bool:
    return args.use_distributed_optimizer and not args.no_save_optim


def write_parts(args: argparse.Namespace, tmp_dir: str, alive: Set[int], iteration: int,
                model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
                consumed_train_samples: int, consumed_valid_samples: int,
                rng: Dict[str, Any], reason: str) -> None:
    """This rank's share, given the ranks that take part (`alive`). Reads the model and
    optimizer only: their owner's main thread may still be in the step's forward/backward."""
    me = torch.distributed.get_rank()
    dirname = rank_dirname(args)
    data_parallel = torch.distributed.get_process_group_ranks(
        parallel_state.get_data_parallel_group(with_context_parallel=True))
    if _first_alive(data_parallel, alive) == me:
        save_optim = optimizer is not None and not args.no_save_optim
        state = model_file_state(args, iteration, model, optimizer if save_optim else None,
                                 scheduler, consumed_train_samples, consumed_valid_samples,
                                 reason, rng)
        os.makedirs(os.path.join(tmp_dir, dirname), exist_ok=True)
        save_file(state, os.path.join(tmp_dir, dirname, MODEL_FILENAME))
    if not _saves_shards(args):
        return
    inter = parallel_state.get_inter_distributed_optimizer_instance_group(check_initialized=False)
    # Shard k of every instance: [owner in instance 0, owner in instance 1], equal copies.
    holders = torch.distributed.get_process_group_ranks(inter) if inter is not None else [me]
    shard = parallel_state.get_data_parallel_rank(with_context_parallel=True,
                                                  partial_data_parallel=True)
    shards = None
    for instance, filename in enumerate(_instance_files(args)):
        owner = holders[instance]
        if _first_alive([owner] + [h for h in holders if h != owner], alive) != me:
            continue
        shards = shards or local_shards(optimizer)
        path = _part_path(tmp_dir, dirname, filename, shard)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(shards, path)


def _position_dirnames(args: argparse.Namespace) -> List[str]:
    return [position_dirname(args, tp, pp, 0)
            for pp in range(args.pipeline_model_parallel_size)
            for tp in range(args.tensor_model_parallel_size)]


def publish_parts(args: argparse.Namespace, tmp_dir: str, final_dir: str, iteration: int
                  ) -> List[str]:
    """Assemble and publish the checkpoint once every part is in `tmp_dir`; returns the
    missing parts instead (and removes `tmp_dir`) when any is."""
    shards = args.data_parallel_size // optimizer_instances(args)
    files = _instance_files(args) if _saves_shards(args) else []
    wanted = {dirname: {filename: [_part_path(tmp_dir, dirname, filename, k)
                                   for k in range(shards)] for filename in files}
              for dirname in _position_dirnames(args)}
    missing = [os.path.join(dirname, MODEL_FILENAME) for dirname in wanted
               if not os.path.isfile(os.path.join(tmp_dir, dirname, MODEL_FILENAME))]
    missing += [os.path.relpath(path, tmp_dir) for parts in wanted.values()
                for paths in parts.values() for path in paths if not os.path.isfile(path)]
    if missing:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return missing
    for dirname, parts in wanted.items():
        for filename, paths in parts.items():
            state = assemble([load_pt(path, CheckpointError) for path in paths])
            save_file(state, os.path.join(tmp_dir, dirname, filename))
    shutil.rmtree(os.path.join(tmp_dir, _PARTS_DIRNAME), ignore_errors=True)
    publish_checkpoint(args, tmp_dir, final_dir, iteration)
    return []

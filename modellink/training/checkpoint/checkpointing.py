"""Checkpoints in Megatron-LM's layout, written atomically.

    <save>/latest_checkpointed_iteration.txt
    <save>/iter_0000100/mp_rank_XX[_YYY][_ZZZ]/model_optim_rng.pt   (+ distrib_optim.pt)

Every rank writes into `iter_0000100.tmp/`; once all have, rank 0 renames it into place and
only then updates the tracker file, so a crash mid-save leaves the previous checkpoint intact
and `latest` pointing at it; a write that fails (a full disk) removes the `.tmp` and is one
error on every rank. On load, a latest checkpoint that any rank cannot read falls back
(with a warning) to the newest older one that every rank can read. Megatron-LM's `release`
checkpoints (`<load>/release/mp_rank_XX/`) give weights only. Files are read with
`modellink.checkpoint.safe_load`, which runs no code pickled into them.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import random
import shutil
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Tuple

import numpy
import torch
from megatron.core import parallel_state, tensor_parallel

from modellink.checkpoint.mappings import EMBEDDING, OUTPUT
from modellink.checkpoint.safe_load import load_pt
from modellink.models.lora import load_weights, lora_enabled, saved_weights
from modellink.models.value_head import is_reward_model, language_model_weights_for
from modellink.training.checkpoint.retention import (
    prune_checkpoints,
    remove_partial_saves,
    saved_iterations,
)
from modellink.training.components import resume_scheduler
from modellink.training.lora_args import check_adapter_flags
from modellink.training.ha.replica import optimizer_files, writes_optimizer_file
from modellink.user_error import UserError

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
MODEL_FILENAME = "model_optim_rng.pt"
OPTIMIZER_FILENAME = "distrib_optim.pt"
CHECKPOINT_VERSION = 3.0
# Megatron-LM's tracker text `release`: weights only, in <load>/release/, training from 0.
RELEASE = -1
_LAYOUT_FLAGS = {
    "tensor_model_parallel_size": "--tensor-model-parallel-size",
    "pipeline_model_parallel_size": "--pipeline-model-parallel-size",
    "virtual_pipeline_model_parallel_size": "--num-layers-per-virtual-pipeline-stage",
    "expert_model_parallel_size": "--expert-model-parallel-size",
    "pipeline_layers": "--num-layer-list",
}


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded as asked; the message names the file or flag."""


class _LayoutMismatch(CheckpointError):
    """Readable but saved under another parallel layout: an older checkpoint will not help."""


@dataclass
class LoadedState:
    iteration: int = 0
    consumed_train_samples: int = 0
    consumed_valid_samples: int = 0
    dying_gasp: Optional[str] = None  # why the run that wrote it stopped early, if it did


def iteration_dir(root: str, iteration: int) -> str:
    return os.path.join(root, "release" if iteration == RELEASE else f"iter_{iteration:07d}")


def rank_dirname(args: argparse.Namespace) -> str:
    """Megatron-LM's per-rank directory name: tp, then pp and ep ranks when those are used."""
    ep_rank = (parallel_state.get_expert_model_parallel_rank()
               if args.expert_model_parallel_size > 1 else 0)
    return position_dirname(args, parallel_state.get_tensor_model_parallel_rank(),
                            parallel_state.get_pipeline_model_parallel_rank(), ep_rank)


def position_dirname(args: argparse.Namespace, tp_rank: int, pp_rank: int, ep_rank: int) -> str:
    """`rank_dirname` of the ranks at that model-parallel position."""
    name = f"mp_rank_{tp_rank:02d}"
    if args.pipeline_model_parallel_size > 1:
        name += f"_{pp_rank:03d}"
    if args.expert_model_parallel_size > 1:
        name += f"_{ep_rank:03d}"
    return name


def _writes_model_file() -> bool:
    # Data-parallel replicas hold identical weights, so one per replica group writes. The
    # expert-data-parallel group is that group (equal to the data-parallel one without EP).
    return parallel_state.get_expert_data_parallel_rank() == 0


def _unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    return chunk.module if hasattr(chunk, "module") else chunk


def rng_state() -> Dict[str, Any]:
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": numpy.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_state(state: Dict[str, Any], device_streams: bool = True) -> None:
    """`device_streams` False: the state was saved on another kind of device (a GPU checkpoint
    resumed on the CPU); its generator states do not fit this device's, so the device streams
    keep their --seed initialisation and only the host generators are restored."""
    random.setstate(state["random_rng_state"])
    numpy.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    if not device_streams:
        return
    if state["cuda_rng_state"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng_state"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["rng_tracker_states"])


@contextlib.contextmanager
def _written(path: str) -> Iterator[BinaryIO]:
    """`path` opened for torch.save, and synced. torch's own file writer reports a full disk
    as an opaque RuntimeError ("unexpected pos ..."); through a Python file object the
    OSError (ENOSPC, EDQUOT) survives as its context and is raised instead."""
    try:
        with open(path, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    except RuntimeError as exc:
        cause = exc.__context__
        if isinstance(cause, OSError):
            raise OSError(cause.errno, cause.strerror, path) from None
        raise


def save_file(obj: Any, path: str) -> None:
    with _written(path) as handle:
        torch.save(obj, handle)


def save_checkpoint(args: argparse.Namespace, iteration: int, model: List[torch.nn.Module],
                    optimizer: Any, scheduler: Any, consumed_train_samples: int,
                    consumed_valid_samples: int, dying_gasp: Optional[str] = None) -> str:
    """Collective: every rank calls it. Returns the final iteration directory. `dying_gasp`
    names why the run is stopping early; it is stored in the checkpoint as `dying_gasp`.
    A write that fails on any rank (a full disk, a quota) fails the save on every rank with
    one CheckpointError, after the partial directory is removed; the previous checkpoint
    stays `latest`."""
    final_dir = iteration_dir(args.save, iteration)
    tmp_dir = final_dir + ".tmp"
    rank0 = torch.distributed.get_rank() == 0

    def start() -> None:
        if rank0:
            remove_partial_saves(args.save)
            os.makedirs(tmp_dir)

    def write() -> None:
        _write_rank_files(args, iteration, tmp_dir, model, optimizer, scheduler,
                          consumed_train_samples, consumed_valid_samples, dying_gasp)

    def publish() -> None:
        if rank0:
            publish_checkpoint(args, tmp_dir, final_dir, iteration)

    for step in (start, write, publish):
        _agree_on_write(step, args, iteration, tmp_dir)
    return final_dir


def _agree_on_write(write: Callable[[], None], args: argparse.Namespace, iteration: int,
                    tmp_dir: str) -> None:
    """Collective (it replaces a barrier): run `write`; when it failed with an OSError on any
    rank, rank 0 removes `tmp_dir` and every rank raises the first rank's error."""
    try:
        write()
        error = None
    except OSError as exc:
        error = f"{exc.filename or args.save}: {exc.strerror or exc}"
    errors: List[Optional[str]] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(errors, error)
    failed = [e for e in errors if e is not None]
    if not failed:
        return
    tracker = os.path.join(args.save, TRACKER_FILENAME)
    if torch.distributed.get_rank() == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if os.path.exists(tracker + ".tmp"):
            os.remove(tracker + ".tmp")
    kept = (f"latest stays iteration {open(tracker).read().strip()}" if os.path.isfile(tracker)
            else "nothing was saved there")
    raise CheckpointError(f"saving the checkpoint of iteration {iteration} to --save "
                          f"{args.save} failed: {failed[0]}; {kept}")


def _write_rank_files(args: argparse.Namespace, iteration: int, tmp_dir: str,
                      model: List[torch.nn.Module], optimizer: Any, scheduler: Any,
                      consumed_train_samples: int, consumed_valid_samples: int,
                      dying_gasp: Optional[str]) -> None:
    rank_dir = os.path.join(tmp_dir, rank_dirname(args))
    save_optim = optimizer is not None and not args.no_save_optim
    distributed_optim = save_optim and args.use_distributed_optimizer
    if _writes_model_file() or distributed_optim:
        os.makedirs(rank_dir, exist_ok=True)
    if distributed_optim:
        # Collective over each optimizer instance's data-parallel group; its rank 0 writes
        # the gathered shards (the replica optimizer's second instance: the replica file).
        optimizer_file = optimizer_files(rank_dir, OPTIMIZER_FILENAME,
                                         args.enable_optimizer_state_local_copy)[0]
        if writes_optimizer_file():
            with _written(optimizer_file) as handle:  # torch.save accepts a file for the name
                optimizer.save_parameter_state(handle)
        else:
            optimizer.save_parameter_state(optimizer_file)
    if _writes_model_file():
        state = model_file_state(args, iteration, model, optimizer if save_optim else None,
                                 scheduler, consumed_train_samples, consumed_valid_samples,
                                 dying_gasp)
        save_file(state, os.path.join(rank_dir, MODEL_FILENAME))


def model_file_state(args: argparse.Namespace, iteration: int, model: List[torch.nn.Module],
                     optimizer: Any, scheduler: Any, consumed_train_samples: int,
                     consumed_valid_samples: int, dying_gasp: Optional[str],
                     rng: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What `model_optim_rng.pt` holds; `optimizer` is None when it is not saved. `rng`
    replaces the RNG streams as they are now (a dying gasp saves those of a step's start)."""
    saved_args = copy.copy(args)
    saved_args.consumed_train_samples = consumed_train_samples
    saved_args.consumed_valid_samples = consumed_valid_samples
    state: Dict[str, Any] = {"args": saved_args, "checkpoint_version": CHECKPOINT_VERSION,
                             "iteration": iteration, "dying_gasp": dying_gasp}
    chunks = [saved_weights(_unwrap(c), args) for c in model]
    if len(chunks) == 1:
        state["model"] = chunks[0]
    else:
        state.update({f"model{i}": chunk for i, chunk in enumerate(chunks)})
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
    if not args.no_save_rng:
        state["rng_state"] = [rng if rng is not None else rng_state()]
    return state


def publish_checkpoint(args: argparse.Namespace, tmp_dir: str, final_dir: str,
                       iteration: int) -> None:
    """One process, once every file is in `tmp_dir`: rename it into place, then the tracker."""
    if os.path.exists(final_dir):  # saving the same iteration again: replace it whole
        stale = final_dir + ".old"
        shutil.rmtree(stale, ignore_errors=True)
        os.rename(final_dir, stale)
        os.rename(tmp_dir, final_dir)
        shutil.rmtree(stale)
    else:
        os.rename(tmp_dir, final_dir)
    tracker_tmp = os.path.join(args.save, TRACKER_FILENAME + ".tmp")
    with open(tracker_tmp, "w") as handle:
        handle.write(str(iteration))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tracker_tmp, os.path.join(args.save, TRACKER_FILENAME))
    if args.keep_last_n_checkpoints:
        prune_checkpoints(args.save, args.keep_last_n_checkpoints, iteration)


def read_tracker(root: str) -> Optional[int]:
    """The latest iteration under `root` (`RELEASE` for a release checkpoint), or None for an
    empty / new directory."""
    tracker = os.path.join(root, TRACKER_FILENAME)
    if not os.path.isfile(tracker):
        if os.path.isdir(root) and any(not n.startswith(".") for n in os.listdir(root)):
            raise CheckpointError(f"--load {root} is not a checkpoint directory "
                                  f"(no {TRACKER_FILENAME})")
        return None
    text = open(tracker).read().strip()
    if text == "release":
        return RELEASE
    if not text.isdigit():
        raise CheckpointError(f"corrupt {tracker}: expected an iteration number, found {text!r}")
    return int(text)


def _load_file(path: str, mmap: bool = False) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file missing: {path} (was it saved with another "
                              f"parallel layout?)")
    return load_pt(path, CheckpointError, mmap=mmap)


def _check_layout(saved: argparse.Namespace, args: argparse.Namespace, path: str) -> None:
    for attr, flag in _LAYOUT_FLAGS.items():
        was, now = getattr(saved, attr, None), getattr(args, attr, None)
        if was != now:
            raise _LayoutMismatch(f"{path} was saved with {flag} {was}, this run uses {now}; "
                                  f"reshard it with tools/checkpoint/convert_ckpt.py")


def _check_vocab(state: Dict[str, Any], args: argparse.Namespace, path: str) -> None:
    """Vocabulary padding decides the embedding's rows; a mismatch would otherwise surface as
    load_state_dict's size error, which names neither size nor flag."""
    tp = args.tensor_model_parallel_size
    for key, weights in state.items():
        if not (key.startswith("model") and isinstance(weights, dict)):
            continue
        # A reward model's output layer is its [1, hidden] value head.
        names = (EMBEDDING,) if is_reward_model(state.get("args")) else (EMBEDDING, OUTPUT)
        for name in names:
            tensor = weights.get(name)
            if not isinstance(tensor, torch.Tensor):
                continue
            rows = tensor.shape[0] * tp
            if rows != args.padded_vocab_size:
                raise _LayoutMismatch(
                    f"{path}: the checkpoint's vocabulary is padded to {rows} rows, this run's "
                    f"to {args.padded_vocab_size}; pass the --make-vocab-size-divisible-by it "
                    f"was converted or trained with (ModelLink's converter and scripts use 1), "
                    f"or --padded-vocab-size {rows}")


def _warn(message: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _candidate_iterations(root: str) -> List[int]:
    """The tracker's iteration, then older complete ones, newest first."""
    try:
        latest = read_tracker(root)
    except CheckpointError as exc:
        older = saved_iterations(root)
        if not older or "corrupt" not in str(exc):
            raise
        _warn(f"{exc}; trying the newest iteration directory instead")
        return older
    if latest is None:
        return []
    return [latest] + [it for it in saved_iterations(root) if it < latest]


def _readable_optimizer_file(rank_dir: str, replicated: bool) -> str:
    """This instance's optimizer shard file or, when that one is unreadable, its replica.
    A zip-directory read (mmap) finds a missing or truncated file without reading the
    shards twice."""
    primary, *others = optimizer_files(rank_dir, OPTIMIZER_FILENAME, replicated)
    try:
        _load_file(primary, mmap=True)
        return primary
    except CheckpointError as exc:
        for other in others:
            if os.path.isfile(other):
                _load_file(other, mmap=True)  # both bad: the replica's problem is reported
                print(f"WARNING: rank {torch.distributed.get_rank()}: {exc}; loading the "
                      f"optimizer state from its replica {other}", file=sys.stderr, flush=True)
                return other
        raise


def _read_rank_files(args: argparse.Namespace, iteration: int, load_optim: bool
                     ) -> Tuple[str, Dict[str, Any], Optional[str]]:
    """This rank's directory, its model file's contents, and the optimizer shard file it
    reads (None when it reads none)."""
    rank_dir = os.path.join(iteration_dir(args.load, iteration), rank_dirname(args))
    state = _load_file(os.path.join(rank_dir, MODEL_FILENAME))
    if "args" in state:
        _check_layout(state["args"], args, rank_dir)
    _check_vocab(state, args, os.path.join(rank_dir, MODEL_FILENAME))
    saved_sharded = getattr(state.get("args"), "use_distributed_optimizer", False)
    optimizer_file = None
    if load_optim and saved_sharded and writes_optimizer_file():
        replicated = getattr(state["args"], "enable_optimizer_state_local_copy", False)
        optimizer_file = _readable_optimizer_file(rank_dir, replicated)
    return rank_dir, state, optimizer_file


def _select_checkpoint(args: argparse.Namespace, load_optim: bool
                       ) -> Optional[Tuple[int, str, Dict[str, Any], Optional[str]]]:
    """Collective: the newest checkpoint every rank can read, with this rank's state."""
    first_error: Optional[str] = None
    for iteration in _candidate_iterations(args.load):
        error: Optional[Tuple[bool, str]] = None
        try:
            rank_dir, state, optimizer_file = _read_rank_files(
                args, iteration, load_optim and iteration != RELEASE)
        except CheckpointError as exc:
            error = (isinstance(exc, _LayoutMismatch), str(exc))
        errors: List[Optional[Tuple[bool, str]]] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(errors, error)
        mismatches = [e[1] for e in errors if e is not None and e[0]]
        if mismatches:
            raise CheckpointError(mismatches[0])
        failures = [e[1] for e in errors if e is not None]
        if not failures:
            if first_error is not None:
                _warn(f"resuming from the older checkpoint at iteration {iteration}")
            return iteration, rank_dir, state, optimizer_file
        first_error = first_error or failures[0]
        _warn(f"checkpoint at iteration {iteration} is unreadable: {failures[0]}")
    if first_error is not None:
        raise CheckpointError(first_error)
    return None


def load_checkpoint(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any,
                    scheduler: Any) -> LoadedState:
    """With LoRA, --load holds the base model (only its weights are read) and --lora-load the
    adapters, with the iteration, optimizer and RNG state of the run that trained them."""
    if not lora_enabled(args):
        return _load_checkpoint(args, model, optimizer, scheduler, "all")
    if args.load:
        base = copy.copy(args)
        base.finetune = True
        _load_checkpoint(base, model, None, None, "base")
    if args.lora_load is None:
        return LoadedState()
    adapters = copy.copy(args)
    adapters.load = args.lora_load
    return _load_checkpoint(adapters, model, optimizer, scheduler, "adapters")


def _no_checkpoint(args: argparse.Namespace, part: str) -> None:
    """Megatron-LM starts from random weights when --load holds no checkpoint, so a typo in
    the path trains from scratch unnoticed. That start is wanted when a job saves to and
    resumes from one folder and this is its first launch: a warning, unless --finetune or
    LoRA's base model (the weights are the point) or --exit-on-missing-checkpoint make it an
    error."""
    flag = "--lora-load" if part == "adapters" else "--load"
    what = ("does not exist" if not os.path.exists(args.load)
            else f"holds no checkpoint (no {TRACKER_FILENAME})")
    why = ("LoRA trains adapters on its weights" if part == "base"
           else "--finetune needs its weights" if args.finetune
           else "--exit-on-missing-checkpoint" if args.exit_on_missing_checkpoint else None)
    if why:
        raise CheckpointError(f"{flag} {args.load} {what} ({why})")
    _warn(f"{flag} {args.load} {what}: training starts from random weights at iteration 0 "
          f"(--exit-on-missing-checkpoint makes this an error)")


def _load_checkpoint(args: argparse.Namespace, model: List[torch.nn.Module], optimizer: Any,
                     scheduler: Any, part: str) -> LoadedState:
    load_optim = optimizer is not None and not args.no_load_optim and not args.finetune
    selected = _select_checkpoint(args, load_optim)
    if selected is None:
        _no_checkpoint(args, part)
        return LoadedState()
    iteration, rank_dir, state, optimizer_file = selected
    if "args" not in state or "iteration" not in state:
        raise CheckpointError(f"{rank_dir}/{MODEL_FILENAME} is not a Megatron checkpoint")
    if part == "adapters":
        check_adapter_flags(state["args"], args, args.load)

    if is_reward_model(state["args"]) and not is_reward_model(args):
        raise CheckpointError(f"{rank_dir} holds a reward model (saved with --stage rm), not a "
                              f"language model")
    keys = ["model"] if len(model) == 1 else [f"model{i}" for i in range(len(model))]
    for key, chunk in zip(keys, model):
        if key not in state:
            raise CheckpointError(f"{rank_dir}/{MODEL_FILENAME} has no {key!r} entry")
        weights = language_model_weights_for(state[key], state["args"], args, _unwrap(chunk))
        try:
            load_weights(_unwrap(chunk), weights, part, args)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()
            raise CheckpointError(f"{rank_dir}: weights do not fit the model built from the "
                                  f"flags: {' '.join(first_line[:3])}") from None
    if optimizer is not None and not (load_optim and iteration != RELEASE):
        # The bf16/fp16 optimizer copied its fp32 main weights from the model when it was
        # built; without optimizer state they come from the weights just loaded (as Megatron-LM
        # does), or its first step would write the initial random weights back.
        optimizer.reload_model_params()

    if iteration == RELEASE:
        if torch.distributed.get_rank() == 0:
            print(f"modellink: loaded the weights of the release checkpoint "
                  f"{iteration_dir(args.load, RELEASE)}; training starts at iteration 0",
                  flush=True)
        return LoadedState()
    if args.finetune:
        return LoadedState()
    if load_optim:
        if "optimizer" not in state:
            raise CheckpointError(f"{rank_dir} holds no optimizer state; pass --no-load-optim")
        if getattr(state["args"], "use_distributed_optimizer", False) != args.use_distributed_optimizer:
            raise CheckpointError(f"{rank_dir}: optimizer state was saved with a different "
                                  f"--use-distributed-optimizer setting; pass --no-load-optim")
        optimizer.load_state_dict(state["optimizer"])
        if args.use_distributed_optimizer:
            # Only each instance's reading rank opens the file (it chose an intact copy).
            with torch.no_grad():  # it copies into views of leaf parameters
                optimizer.load_parameter_state(optimizer_file)
    if scheduler is not None and "opt_param_scheduler" in state:
        resume_scheduler(args, scheduler, state["opt_param_scheduler"], rank_dir)
    if not args.no_load_rng:
        if "rng_state" not in state:
            raise CheckpointError(f"{rank_dir} holds no RNG state; pass --no-load-rng")
        set_rng_state(state["rng_state"][0], device_streams=getattr(
            state["args"], "device", args.device) == args.device)
    saved = state["args"]
    dying_gasp = state.get("dying_gasp")
    if dying_gasp and torch.distributed.get_rank() == 0:
        print(f"modellink: resuming from a dying-gasp checkpoint at iteration {iteration} "
              f"(saved on {dying_gasp})", flush=True)
    return LoadedState(iteration, getattr(saved, "consumed_train_samples", 0),
                       getattr(saved, "consumed_valid_samples", 0), dying_gasp)

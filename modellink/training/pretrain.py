"""`pretrain()`: what `pretrain_gpt.py` runs, from command line to the last checkpoint."""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch

from modellink.arguments import ArgumentError, parse_args, validate_training_run
from modellink.data.tokenizers import build_tokenizer
from modellink.modellink_flags import device_notes
from modellink.models.gpt import transformer_config_from_args
from modellink.models.layer_spec import operator_paths
from modellink.models.lora import lora_enabled
from modellink.plan.memory import estimate
from modellink.plan.report import render as render_plan
from modellink.training.checkpoint.checkpointing import load_checkpoint
from modellink.training.components import build_model, build_optimizer, build_scheduler
from modellink.training.data.datasets import (build_iterator, build_split_datasets,
                                               check_data_files)
from modellink.training.initialize import initialize, shutdown
from modellink.training.loop import (ForwardStep, TrainState, configure_model_hooks,
                                     evaluate_only, evaluate_test, save, train)
from modellink.training.monitoring.memory import MemoryReport
from modellink.training.ha.replica import log_memory_account
from modellink.training.posttrain.stage import stage_forward_step


def padded_vocab_size(vocab_size: int, args: argparse.Namespace) -> int:
    """Round up so every tensor-parallel rank holds an equal, aligned vocabulary slice."""
    if args.padded_vocab_size is not None:
        if args.padded_vocab_size < vocab_size:
            raise ArgumentError(f"--padded-vocab-size {args.padded_vocab_size} is smaller than "
                                f"the tokenizer's vocabulary ({vocab_size})")
        if args.padded_vocab_size % args.tensor_model_parallel_size:
            raise ArgumentError(f"--padded-vocab-size {args.padded_vocab_size} is not divisible "
                                f"by --tensor-model-parallel-size {args.tensor_model_parallel_size}")
        return args.padded_vocab_size
    multiple = args.make_vocab_size_divisible_by * args.tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def _training_tokenizer(args: argparse.Namespace) -> Any:
    if args.tokenizer_type is None:
        if not args.mock_data or args.vocab_size is None:
            raise ArgumentError("--tokenizer-type is required (or --mock-data with --vocab-size)")
        args.tokenizer_type = "NullTokenizer"
    return build_tokenizer(args)


def _iterators(dataset: Any, args: argparse.Namespace, consumed: int, chunks: int
               ) -> Optional[List[Any]]:
    # Each virtual-pipeline chunk pulls every micro-batch, so each gets its own iterator.
    iterators = [build_iterator(dataset, args, consumed) for _ in range(chunks)]
    return None if iterators[0] is None else iterators


def _rampup_note(args: argparse.Namespace) -> str:
    if args.rampup_batch_size is None:
        return ""
    start, increment, samples = args.rampup_batch_size
    return (f" once the global batch size has ramped up from {start} by {increment} over "
            f"{samples} samples to {args.global_batch_size} ({args.train_iters} iterations)")


def _log_setup(args: argparse.Namespace, model: List[torch.nn.Module]) -> None:
    params = [p for chunk in model for p in chunk.parameters()]
    # On the device: NCCL and HCCL serve the default group and refuse host tensors.
    local = torch.tensor([sum(p.numel() for p in params),
                          sum(p.numel() for p in params if p.requires_grad)],
                         device=torch.cuda.current_device())
    torch.distributed.all_reduce(local)  # replicas count once per data-parallel copy
    if torch.distributed.get_rank() != 0:
        return
    replicas = args.data_parallel_size * args.context_parallel_size  # CP ranks hold copies too
    total, trainable = (int(n) // replicas for n in local.tolist())
    print(f"modellink: device {args.device}, world {args.world_size} = "
          f"TP {args.tensor_model_parallel_size} x PP {args.pipeline_model_parallel_size} x "
          f"CP {args.context_parallel_size} x DP {args.data_parallel_size} (EP {args.expert_model_parallel_size}, "
          f"VPP {args.virtual_pipeline_model_parallel_size or 1}), "
          f"micro-batches per step {args.num_microbatches}{_rampup_note(args)}", flush=True)
    print(f"modellink: operators: {operator_paths(args, args.device)}", flush=True)
    for note in args.compatibility_notes:
        print(f"modellink: {note}", flush=True)
    print(f"modellink: parameters ~{total / 1e6:.2f}M (summed over model-parallel shards)",
          flush=True)
    if lora_enabled(args):
        print(f"modellink: LoRA r {args.lora_r}, alpha {args.lora_alpha} on "
              f"{' '.join(args.lora_target_modules)}: trainable parameters {trainable:,} of "
              f"{total:,} ({100 * trainable / total:.2f}%)", flush=True)
    if args.is_instruction_dataset:
        lengths = "per micro-batch" if args.variable_seq_lengths else f"{args.seq_length}"
        print(f"modellink: instruction data, prompt type {args.prompt_type or 'not given'}, "
              f"padded length {lengths}, {'file order' if args.no_shuffle else 'shuffled'}",
              flush=True)


@dataclass
class TrainingSession:
    """What `pretrain()` builds before its loop: the model chunks, optimizer, scheduler, the
    resumed state, the stage's forward step and the data iterators (None where a split is
    empty)."""
    args: argparse.Namespace
    model: List[torch.nn.Module]
    optimizer: Any
    scheduler: Any
    state: TrainState
    forward: ForwardStep
    train_iters: Optional[List[Any]]
    valid_iters: Optional[List[Any]]
    test_iters: Optional[List[Any]]
    memory: MemoryReport


@contextlib.contextmanager
def training_session(args: argparse.Namespace, tokenizer: Any) -> Iterator[TrainingSession]:
    """Process groups, model, optimizer, checkpoint and data for parsed arguments; the process
    groups are torn down on exit, so a process (or benchmark) can open another."""
    backend = initialize(args)
    args.compatibility_notes += device_notes(args)
    try:
        config = transformer_config_from_args(args, backend.device)
        memory = MemoryReport(backend.device)
        model = build_model(args, config)
        optimizer = build_optimizer(args, config, model)
        scheduler = build_scheduler(args, optimizer)
        configure_model_hooks(config, model, optimizer)
        _log_setup(args, model)
        log_memory_account(args, config.params_dtype)
        state = TrainState()
        if args.load or args.lora_load:
            loaded = load_checkpoint(args, model, optimizer, scheduler)
            state = TrainState(loaded.iteration, loaded.consumed_train_samples,
                               loaded.consumed_valid_samples)
        forward = stage_forward_step(args, config, model, state.iteration)
        train_ds, valid_ds, test_ds = build_split_datasets(args, tokenizer)
        yield TrainingSession(
            args, model, optimizer, scheduler, state, forward,
            _iterators(train_ds, args, state.consumed_train_samples, len(model)),
            _iterators(valid_ds, args, state.consumed_valid_samples, len(model)),
            _iterators(test_ds, args, 0, len(model)), memory)
    finally:
        shutdown()


def parse_training_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Any]:
    """The command line, checked before any work, and the tokenizer it names."""
    args = parse_args(argv)
    validate_training_run(args)
    check_data_files(args)
    tokenizer = _training_tokenizer(args)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args)
    return args, tokenizer


def pretrain(argv: Optional[Sequence[str]] = None) -> TrainState:
    start_time = time.time()  # --exit-duration-in-mins counts set-up time too, as Megatron-LM
    args, tokenizer = parse_training_args(argv)
    if args.plan_only:  # before any process group, model or data: the plan needs none
        if int(os.environ.get("RANK", 0)) == 0:
            print(render_plan(args, estimate(args), None), flush=True)
        return TrainState()
    with training_session(args, tokenizer) as run:
        start = run.state.iteration
        if args.skip_train:
            state = evaluate_only(args, run.model, run.valid_iters, run.state, run.forward)
        else:
            state = train(args, run.model, run.optimizer, run.scheduler, run.train_iters,
                          run.valid_iters, run.state, start_time, run.forward, run.memory)
        if args.save and state.iteration > start and state.last_saved_iteration != state.iteration:
            save(args, run.model, run.optimizer, run.scheduler, state)
        if run.test_iters and state.exit_reason is None:
            evaluate_test(args, run.model, run.test_iters, state, run.forward)
        torch.distributed.barrier()
        return state

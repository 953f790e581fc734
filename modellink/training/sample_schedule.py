"""Megatron-LM's two ways to size a run: in iterations (--train-iters, --lr-decay-iters, ...) or
in samples (--train-samples, --lr-decay-samples, ...). Both end as one learning-rate schedule
whose steps count samples, so a sample-based run and the equivalent iteration-based run follow
the same curve. A sample-based run may also ramp its global batch size up
(--rampup-batch-size), which megatron-core's micro-batch calculator follows during the run."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator

from modellink.argument_errors import require


def add_sample_schedule_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--train-samples", type=int, default=None,
                       help="samples to train on instead of --train-iters; the run takes "
                            "--train-samples // --global-batch-size iterations")
    group.add_argument("--lr-decay-samples", type=int, default=None,
                       help="samples to decay the learning rate over (default --train-samples)")
    group.add_argument("--lr-warmup-samples", type=int, default=0,
                       help="samples of linear learning-rate warmup")
    group.add_argument("--lr-wsd-decay-samples", type=int, default=None,
                       help="samples of the WSD schedule's final decay")
    group.add_argument("--rampup-batch-size", nargs=3, type=int, default=None,
                       metavar=("START", "INCREMENT", "SAMPLES"),
                       help="with --train-samples: the global batch size starts at START and "
                            "grows by INCREMENT in equal steps over the first SAMPLES samples "
                            "up to --global-batch-size")


def validate_sample_schedule(args: argparse.Namespace) -> None:
    """Megatron-LM's rules: one unit per run, never a mix; a sample-based run's iteration count
    is derived here so everything after parsing can count iterations."""
    samples = args.train_samples is not None
    require(samples or args.train_iters is not None, "pass --train-iters N or --train-samples N")
    require(samples or args.rampup_batch_size is None,
            "--rampup-batch-size needs --train-samples (Megatron-LM ramps the batch size of "
            "sample-based runs only)")
    if not samples:
        for flag, value in (("--lr-decay-samples", args.lr_decay_samples),
                            ("--lr-warmup-samples", args.lr_warmup_samples or None),
                            ("--lr-wsd-decay-samples", args.lr_wsd_decay_samples)):
            require(value is None, f"{flag} needs --train-samples (this run counts iterations: "
                                   f"use the -iters flag)")
        return
    require(args.train_iters is None, "--train-iters and --train-samples are mutually exclusive")
    for flag, value in (("--lr-decay-iters", args.lr_decay_iters),
                        ("--lr-warmup-iters", args.lr_warmup_iters or None),
                        ("--lr-wsd-decay-iters", args.lr_wsd_decay_iters)):
        require(value is None, f"{flag} needs --train-iters (this run counts samples: use the "
                               f"-samples flag)")
    require(args.lr_warmup_fraction is None or not args.lr_warmup_samples,
            "--lr-warmup-fraction and --lr-warmup-samples are mutually exclusive")
    first_batch = args.global_batch_size
    if args.rampup_batch_size is not None:
        _validate_rampup(args)
        first_batch = args.rampup_batch_size[0]
    require(args.train_samples >= first_batch,
            f"--train-samples {args.train_samples} is less than one global batch "
            f"({first_batch})")
    args.train_iters = _sample_based_iterations(args)
    if args.lr_decay_samples is None:
        args.lr_decay_samples = args.train_samples


def _validate_rampup(args: argparse.Namespace) -> None:
    """The sizes megatron-core's calculator asserts on (or divides by zero over), as one line
    each; every batch size of the ramp must split into whole micro-batches per rank."""
    start, increment, ramp_samples = args.rampup_batch_size
    gbs, per_step = args.global_batch_size, args.micro_batch_size * args.data_parallel_size
    flag = f"--rampup-batch-size {start} {increment} {ramp_samples}"
    require(start >= 1 and increment >= 1 and ramp_samples >= 0,
            f"{flag}: the start and the increment must be >= 1 and the samples >= 0")
    require(start < gbs, f"{flag}: the start must be below --global-batch-size {gbs}")
    require((gbs - start) % increment == 0,
            f"{flag}: --global-batch-size {gbs} minus the start ({gbs - start}) is not "
            f"divisible by the increment")
    require(start % per_step == 0 and increment % per_step == 0,
            f"{flag}: the start and the increment must be divisible by --micro-batch-size "
            f"{args.micro_batch_size} x data-parallel size {args.data_parallel_size}")
    pp = args.pipeline_model_parallel_size
    if args.virtual_pipeline_model_parallel_size is not None:
        require((start // per_step) % pp == 0 and (increment // per_step) % pp == 0,
                f"{flag}: the interleaved pipeline needs every step's micro-batch count to be "
                f"a multiple of --pipeline-model-parallel-size {pp}")


def _rampup_calculator(args: argparse.Namespace) -> RampupBatchsizeNumMicroBatchesCalculator:
    """megatron-core's ramp for these flags, apart from the global one the loop follows."""
    start, increment, ramp_samples = args.rampup_batch_size
    return RampupBatchsizeNumMicroBatchesCalculator(
        args.global_batch_size, args.micro_batch_size, args.data_parallel_size,
        decrease_batch_size_if_needed=False, rank=-1, start_global_batch_size=start,
        batch_size_increment=increment, ramup_samples=ramp_samples)


def _sample_based_iterations(args: argparse.Namespace) -> int:
    """Megatron-LM's count: the ramp's steps at their growing sizes (while no more than the
    ramp's samples are consumed), then whole global batches; a partial last batch is dropped."""
    if args.rampup_batch_size is None:
        return args.train_samples // args.global_batch_size
    calculator = _rampup_calculator(args)
    iterations, consumed = 0, 0
    while consumed <= calculator.ramup_samples and consumed <= args.train_samples:
        calculator.update(consumed, consistency_check=False)
        consumed += calculator.get_current_global_batch_size()
        iterations += 1
    if args.train_samples > consumed:
        iterations += (args.train_samples - consumed) // args.global_batch_size
    return iterations


@dataclass
class ScheduleSteps:
    """The schedule's lengths in samples, as megatron-core's OptimizerParamScheduler takes them."""
    warmup: int
    decay: int
    weight_decay_increment: int
    wsd_decay: int


def schedule_steps(args: argparse.Namespace) -> ScheduleSteps:
    if args.train_samples is not None:
        decay, total = args.lr_decay_samples, args.train_samples
        warmup, wsd = args.lr_warmup_samples, args.lr_wsd_decay_samples or 0
    else:
        gbs = args.global_batch_size
        decay, total = args.lr_decay_iters * gbs, args.train_iters * gbs
        warmup, wsd = args.lr_warmup_iters * gbs, (args.lr_wsd_decay_iters or 0) * gbs
    if args.lr_warmup_fraction is not None:
        warmup = args.lr_warmup_fraction * decay
    return ScheduleSteps(int(warmup), decay, total, wsd)

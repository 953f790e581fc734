"""Megatron-LM's two ways to size a run: in iterations (--train-iters, --lr-decay-iters, ...) or
in samples (--train-samples, --lr-decay-samples, ...). Both end as one learning-rate schedule
whose steps count samples, so a sample-based run and the equivalent iteration-based run follow
the same curve."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

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


def validate_sample_schedule(args: argparse.Namespace) -> None:
    """Megatron-LM's rules: one unit per run, never a mix; a sample-based run's iteration count
    is derived here so everything after parsing can count iterations."""
    samples = args.train_samples is not None
    require(samples or args.train_iters is not None, "pass --train-iters N or --train-samples N")
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
    require(args.train_samples >= args.global_batch_size,
            f"--train-samples {args.train_samples} is less than one global batch "
            f"({args.global_batch_size})")
    args.train_iters = args.train_samples // args.global_batch_size
    if args.lr_decay_samples is None:
        args.lr_decay_samples = args.train_samples


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

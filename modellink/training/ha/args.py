"""Flags for fault tolerance, numerics guards, determinism, profiling and the training
monitor (Megatron-LM's and ModelLink's names), added to the training parser by
modellink.arguments, and their checks against the rest of the command line."""
from __future__ import annotations

import argparse
import importlib.util

from modellink.argument_errors import require


def add_resilience_arguments(parser: argparse.ArgumentParser) -> None:
    """Fault tolerance, numerics guards, determinism, profiling and the training monitor."""
    g = parser.add_argument_group("fault tolerance")
    g.add_argument("--exit-signal-handler", action="store_true",
                   help="on SIGTERM, every rank saves a dying-gasp checkpoint (with --save) "
                        "at the end of the current iteration, then exits")
    g.add_argument("--exit-duration-in-mins", type=int, default=None,
                   help="save (with --save) and exit once the run has lasted this long")
    g.add_argument("--keep-last-n-checkpoints", type=int, default=None,
                   help="after each save, delete all but the newest N iteration directories")
    g.add_argument("--enable-high-availability", action="store_true",
                   help="an exception in the train loop saves a dying-gasp checkpoint (with "
                        "--save) before it is re-raised")
    g.add_argument("--enable-optimizer-state-local-copy", action="store_true",
                   help="replica optimizer: every distributed-optimizer shard also lives on a "
                        "second data-parallel rank (needs --enable-high-availability)")
    g = parser.add_argument_group("numerics")
    g.add_argument("--check-for-nan-in-loss-and-grad", action="store_true", default=True,
                   help="stop, naming the iteration and rank, on a NaN/Inf loss or local grad "
                        "(on by default, as in Megatron-LM and ModelLink)")
    g.add_argument("--no-check-for-nan-in-loss-and-grad", action="store_false",
                   dest="check_for_nan_in_loss_and_grad",
                   help="train on through NaN/Inf losses and gradients")
    g = parser.add_argument_group("determinism (ModelLink)")
    g.add_argument("--use-deter-comp", action="store_true",
                   help="deterministic kernels and reductions: identical runs give identical bits")
    g = parser.add_argument_group("profiling")
    g.add_argument("--profile", action="store_true")
    g.add_argument("--profile-step-start", type=int, default=10)
    g.add_argument("--profile-step-end", type=int, default=12)
    g.add_argument("--profile-ranks", nargs="+", type=int, default=[-1],
                   help="global ranks to profile; -1 profiles every rank")
    g.add_argument("--profile-level", default="level0", choices=["level0", "level1", "level2"])
    g.add_argument("--profile-with-cpu", action="store_true")
    g.add_argument("--profile-with-stack", action="store_true")
    g.add_argument("--profile-with-memory", action="store_true")
    g.add_argument("--profile-record-shapes", action="store_true")
    g.add_argument("--profile-save-path", default="./profile_dir")
    g = parser.add_argument_group("training monitor")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--tensorboard-log-interval", type=int, default=1)
    g.add_argument("--tensorboard-queue-size", type=int, default=1000)
    g.add_argument("--log-timers-to-tensorboard", action="store_true")
    g.add_argument("--wandb-project", default="")
    g.add_argument("--wandb-exp-name", default="")
    g.add_argument("--wandb-save-dir", default="")


def validate_resilience_args(args: argparse.Namespace) -> None:
    if args.fp16 and args.loss_scale is None and args.check_for_nan_in_loss_and_grad:
        # As Megatron-LM: dynamic loss scaling skips the steps whose gradients overflow, so an
        # Inf there is the scaler's signal, not a diverged run.
        args.check_for_nan_in_loss_and_grad = False
        args.compatibility_notes.append(
            "NaN/Inf checking is off: with --fp16 and dynamic loss scaling an overflowing "
            "step is skipped and the loss scale lowered (pass --loss-scale to keep the check)")
    if args.enable_optimizer_state_local_copy:
        dp = args.data_parallel_size
        require(args.enable_high_availability,
                 "--enable-optimizer-state-local-copy needs --enable-high-availability")
        require(args.use_distributed_optimizer,
                 "--enable-optimizer-state-local-copy needs --use-distributed-optimizer")
        require(dp >= 2 and dp % 2 == 0,
                 f"--enable-optimizer-state-local-copy needs an even data-parallel size >= 2, "
                 f"got {dp}")
        require(args.expert_model_parallel_size == 1,
                 "--enable-optimizer-state-local-copy does not support "
                 "--expert-model-parallel-size > 1 yet")
    require(args.exit_duration_in_mins is None or args.exit_duration_in_mins > 0,
             f"--exit-duration-in-mins must be > 0, got {args.exit_duration_in_mins}")
    if args.keep_last_n_checkpoints is not None:
        require(args.keep_last_n_checkpoints >= 1,
                 f"--keep-last-n-checkpoints must be >= 1, got {args.keep_last_n_checkpoints}")
        require(args.save is not None, "--keep-last-n-checkpoints needs --save DIR")
    if args.profile:
        require(0 <= args.profile_step_start < args.profile_step_end,
                 f"--profile-step-start {args.profile_step_start} must be >= 0 and below "
                 f"--profile-step-end {args.profile_step_end}")
    require(args.tensorboard_log_interval >= 1,
             f"--tensorboard-log-interval must be >= 1, got {args.tensorboard_log_interval}")
    if args.log_timers_to_tensorboard:
        require(args.tensorboard_dir is not None,
                 "--log-timers-to-tensorboard needs --tensorboard-dir")
    if args.wandb_project:
        require(args.wandb_exp_name != "", "--wandb-project needs --wandb-exp-name")
    # The monitor packages are optional; a flag that needs a missing one fails here, on every
    # rank alike, instead of on the one rank that writes.
    for flag, value, package in (("--tensorboard-dir", args.tensorboard_dir, "tensorboard"),
                                 ("--wandb-project", args.wandb_project, "wandb")):
        require(not value or importlib.util.find_spec(package) is not None,
                 f"{flag} needs the {package} package, which is not installed "
                 f"(pip install {package})")

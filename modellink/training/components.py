"""Build what the train loop drives: DDP-wrapped model chunks, the optimizer, the LR schedule."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.argument_errors import ArgumentError
from modellink.models.gpt import build_model_chunks
from modellink.models.init import init_layout_independent
from modellink.models.lora import lora_enabled, prepare_for_training
from modellink.training.ha.replica import optimizer_instances
from modellink.training.sample_schedule import schedule_steps


def build_model(args: argparse.Namespace, config: TransformerConfig) -> List[torch.nn.Module]:
    chunks = build_model_chunks(args, config)
    if args.use_cpu_initialization:
        init_layout_independent(chunks, config, args.seed)
    if lora_enabled(args):  # before DDP, which gives gradient buffers to trainable params only
        prepare_for_training(chunks, args)
    if args.device != "cpu":
        chunks = [chunk.cuda() for chunk in chunks]  # transfer_to_npu maps .cuda() on NPU
    if args.fp16 or args.bf16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.accumulate_allreduce_grads_in_fp32,
        overlap_grad_reduce=args.overlap_grad_reduce,
        overlap_param_gather=args.overlap_param_gather,
        use_distributed_optimizer=args.use_distributed_optimizer,
        bucket_size=args.ddp_bucket_size,
        check_for_nan_in_grad=args.check_for_nan_in_loss_and_grad,
        num_distributed_optimizer_instances=optimizer_instances(args),
    )
    # Only the first chunk gets bucketed overlap; Megatron-LM does the same for VPP.
    return [
        DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def build_optimizer(args: argparse.Namespace, config: TransformerConfig,
                    model: List[torch.nn.Module]) -> MegatronOptimizer:
    optimizer_config = OptimizerConfig(
        optimizer=args.optimizer,
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        sgd_momentum=args.sgd_momentum,
        fp16=args.fp16,
        bf16=args.bf16,
        params_dtype=config.params_dtype,
        loss_scale=args.loss_scale,
        initial_loss_scale=args.initial_loss_scale,
        min_loss_scale=args.min_loss_scale,
        loss_scale_window=args.loss_scale_window,
        hysteresis=args.hysteresis,
        clip_grad=args.clip_grad,
        use_distributed_optimizer=args.use_distributed_optimizer,
        overlap_param_gather_with_optimizer_step=False,
        log_num_zeros_in_grad=args.log_num_zeros_in_grad,
    )
    optimizer = get_megatron_optimizer(optimizer_config, model)
    if args.device in _FUSED_ADAM_DEVICES:
        for member in getattr(optimizer, "chained_optimizers", [optimizer]):
            use_fused_adam(member.optimizer)
    return optimizer


# Devices with a fused torch Adam(W) kernel. Without apex or Transformer Engine megatron-core
# builds torch's AdamW, which on CPU defaults to its per-parameter loop (a measured ~10% of a
# CPU training step); the fused kernel does the same update in one pass per tensor.
_FUSED_ADAM_DEVICES = ("cpu", "cuda")


def use_fused_adam(inner: torch.optim.Optimizer) -> None:
    """Switch torch's Adam(W) to its fused kernel, also after a checkpoint load."""
    if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return  # SGD, or apex / Transformer Engine's own fused Adam
    _set_fused(inner)
    # A checkpoint's param groups replace the live ones on load, flags included: one saved by
    # the per-parameter path would switch the fused kernel off again.
    inner.register_load_state_dict_post_hook(_set_fused)


def _set_fused(inner: torch.optim.Optimizer) -> None:
    for group in inner.param_groups:
        group["fused"], group["foreach"] = True, False
        for param in group["params"]:
            step = inner.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):  # the fused kernel reads it on the param's device
                inner.state[param]["step"] = step.to(dtype=torch.float32, device=param.device)


def build_scheduler(args: argparse.Namespace, optimizer: MegatronOptimizer
                    ) -> OptimizerParamScheduler:
    """Megatron-LM counts scheduler steps in samples, so resumed runs with a changed batch
    size keep the same schedule."""
    steps = schedule_steps(args)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=steps.warmup,
        lr_decay_steps=steps.decay,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay,
        wd_incr_steps=steps.weight_decay_increment,
        wd_incr_style=args.weight_decay_incr_style,
        wsd_decay_steps=steps.wsd_decay,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=args.override_opt_param_scheduler,
    )


# Each scheduler state entry (with the names older Megatron-LM checkpoints used for it first)
# and the flags it comes from; its steps count samples: iterations x --global-batch-size.
_SCHEDULE_ENTRIES = {
    "max_lr": ("--lr", ("start_lr",)),
    "min_lr": ("--min-lr", ()),
    "lr_warmup_steps": ("--lr-warmup-iters/--lr-warmup-fraction", ("warmup_iter", "warmup_steps")),
    "lr_decay_steps": ("--lr-decay-iters/--lr-decay-samples, default the run's length",
                       ("end_iter", "decay_steps")),
    "lr_decay_style": ("--lr-decay-style", ("decay_style",)),
    "start_wd": ("--start-weight-decay", ()),
    "end_wd": ("--end-weight-decay", ()),
    "wd_incr_steps": ("--train-iters", ()),
    "wd_incr_style": ("--weight-decay-incr-style", ()),
}


def _schedule_changes(scheduler: OptimizerParamScheduler, saved: Dict[str, Any]) -> List[str]:
    now = scheduler.state_dict()
    changes = []
    for key, (flags, old_names) in _SCHEDULE_ENTRIES.items():
        found = [saved[name] for name in old_names + (key,) if name in saved]
        if found and found[0] != now[key]:
            changes.append(f"{key} {found[0]} -> {now[key]} ({flags})")
    return changes


def resume_scheduler(args: argparse.Namespace, scheduler: OptimizerParamScheduler,
                     saved: Dict[str, Any], where: str) -> None:
    """Megatron-LM's resume rules for a schedule the flags change: --override-opt_param-scheduler
    follows the flags, --use-checkpoint-opt_param-scheduler keeps the checkpoint's, and without
    either it is an error (megatron-core asserts; keeping it silently is how a run resumed with a
    larger --train-iters trained at --min-lr). Either way the step count is the checkpoint's."""
    changes = _schedule_changes(scheduler, saved)
    if changes and not (args.override_opt_param_scheduler
                        or args.use_checkpoint_opt_param_scheduler):
        raise ArgumentError(f"{where}: these flags change the checkpoint's learning-rate "
                            f"schedule ({'; '.join(changes)}; steps are samples): pass "
                            f"--override-opt_param-scheduler to follow the flags or "
                            f"--use-checkpoint-opt_param-scheduler to keep the checkpoint's")
    scheduler.load_state_dict(saved)
    if not changes or torch.distributed.get_rank() != 0:
        return
    if args.override_opt_param_scheduler:
        print(f"modellink: following this run's learning-rate schedule, not the checkpoint's "
              f"(--override-opt_param-scheduler): {'; '.join(changes)}", flush=True)
        return
    note = ""
    end = scheduler.lr_decay_steps // args.global_batch_size
    if scheduler.lr_decay_style != "constant" and end < args.train_iters:
        note = (f"; its decay ends at iteration {end}: the learning rate is --min-lr "
                f"{scheduler.min_lr} from iteration {end + 1} on")
    print(f"WARNING: keeping the checkpoint's learning-rate schedule "
          f"(--use-checkpoint-opt_param-scheduler), not these flags': {'; '.join(changes)}{note}",
          file=sys.stderr, flush=True)

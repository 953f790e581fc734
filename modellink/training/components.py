"""Build what the train loop drives: DDP-wrapped model chunks, the optimizer, the LR schedule."""
from __future__ import annotations

import argparse
from typing import List

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.models.gpt import build_model_chunks
from modellink.models.init import init_layout_independent
from modellink.models.lora import lora_enabled, prepare_for_training
from modellink.training.replica import optimizer_instances


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
    )
    return get_megatron_optimizer(optimizer_config, model)


def build_scheduler(args: argparse.Namespace, optimizer: MegatronOptimizer
                    ) -> OptimizerParamScheduler:
    """Megatron-LM counts scheduler steps in samples, so resumed runs with a changed batch
    size keep the same schedule."""
    gbs = args.global_batch_size
    warmup_iters = (args.lr_warmup_fraction * args.lr_decay_iters
                    if args.lr_warmup_fraction is not None else args.lr_warmup_iters)
    wsd_iters = args.lr_wsd_decay_iters or 0
    return OptimizerParamScheduler(
        optimizer,
        init_lr=args.lr_warmup_init,
        max_lr=args.lr,
        min_lr=args.min_lr,
        lr_warmup_steps=int(warmup_iters * gbs),
        lr_decay_steps=args.lr_decay_iters * gbs,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.start_weight_decay,
        end_wd=args.end_weight_decay,
        wd_incr_steps=args.train_iters * gbs,
        wd_incr_style=args.weight_decay_incr_style,
        wsd_decay_steps=wsd_iters * gbs,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
    )

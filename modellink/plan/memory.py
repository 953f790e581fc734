"""`estimate(args) -> MemoryPlan`: per-rank bytes of weights, gradients, optimizer state and
activations for a parsed pretrain_gpt.py command line, one entry per pipeline stage.

Dtypes follow what modellink/training/components.py asks of megatron-core 0.16: weights in
--bf16/--fp16/fp32; DDP's gradient buffer in fp32 with
--accumulate-allreduce-grads-in-fp32, else in the weights' dtype; 16-bit weights get fp32 main
copies in the optimizer; Adam keeps two fp32 moments per main parameter. The distributed
optimizer shards main copies and moments over the data x context parallel group (experts: over
the expert data-parallel group), split in two whole copies with the replica optimizer.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List

from modellink.plan.activations import ActivationPlan, activation_plan
from modellink.plan.params import StageParams, stage_params
from modellink.training.ha.replica import optimizer_instances

FP32 = 4


@dataclass(frozen=True)
class StagePlan:
    """Bytes on one rank of one pipeline stage. `optimizer` is the persistent state (fp32 main
    copies and moments); `step_grads` the fp32 gradient copies the optimizer step makes from a
    16-bit gradient buffer, alive only during the step, when activations are already freed."""
    stage: int
    elements: StageParams
    weights: int
    grads: int
    optimizer: int
    step_grads: int
    activations: ActivationPlan

    @property
    def static(self) -> int:
        return self.weights + self.grads + self.optimizer

    @property
    def peak(self) -> int:
        return self.static + max(self.activations.total, self.step_grads)


@dataclass(frozen=True)
class MemoryPlan:
    """The plan of one run: a `StagePlan` per pipeline stage, and the shard counts used."""
    stages: List[StagePlan]
    optimizer_kind: str
    dense_shards: int
    expert_shards: int

    @property
    def peak(self) -> int:
        return max(stage.peak for stage in self.stages)

    @property
    def peak_stage(self) -> StagePlan:
        return max(self.stages, key=lambda stage: stage.peak)


def param_bytes(args: argparse.Namespace) -> int:
    return 2 if args.bf16 or args.fp16 else FP32


def _moment_bytes(args: argparse.Namespace) -> int:
    if args.optimizer == "adam":
        return 2 * FP32
    return FP32 if args.sgd_momentum else 0  # torch's SGD keeps no buffer without momentum


def optimizer_shards(args: argparse.Namespace) -> "tuple[int, int]":
    """Ranks that split the dense and the expert optimizer state (1, 1 when not distributed)."""
    if not args.use_distributed_optimizer:
        return 1, 1
    instances = optimizer_instances(args)
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    dense = args.data_parallel_size * args.context_parallel_size
    expert = args.world_size // (tp * args.expert_model_parallel_size * pp)
    return dense // instances, max(expert // instances, 1)


def _stage(args: argparse.Namespace, stage: int) -> StagePlan:
    n = stage_params(args, stage)
    width = param_bytes(args)
    held = n.dense + n.experts
    grad_width = FP32 if args.accumulate_allreduce_grads_in_fp32 else width
    dense_shards, expert_shards = optimizer_shards(args)
    dense_state = n.dense / dense_shards
    expert_state = n.experts / expert_shards
    state = dense_state + expert_state
    main_copies = state * FP32 if width != FP32 else 0
    optimizer = main_copies + state * _moment_bytes(args)
    step_grads = state * FP32 if grad_width != FP32 else 0
    return StagePlan(
        stage=stage, elements=n,
        weights=held * width, grads=held * grad_width,
        optimizer=round(optimizer), step_grads=round(step_grads),
        activations=activation_plan(args, stage))


def estimate(args: argparse.Namespace) -> MemoryPlan:
    """The memory plan of parsed and validated pretrain arguments (`parse_args`), whose
    `padded_vocab_size` is set (pretrain sets it from the tokenizer; the CLI from the flags)."""
    kind = ("replica distributed" if args.enable_optimizer_state_local_copy
            else "distributed" if args.use_distributed_optimizer else "plain")
    dense, expert = optimizer_shards(args)
    stages = [_stage(args, stage) for stage in range(args.pipeline_model_parallel_size)]
    return MemoryPlan(stages=stages, optimizer_kind=kind, dense_shards=dense, expert_shards=expert)

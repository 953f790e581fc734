"""Throughput arithmetic, the parameter norm, and Megatron-LM's log-line format (existing log
parsers read it)."""
from __future__ import annotations

import argparse
from datetime import datetime
from typing import Dict, List, Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared

from modellink.ops.activations import gated_mlp


def flops_per_iteration(args: argparse.Namespace, batch_size: Optional[int] = None) -> float:
    """Model FLOPs of one forward+backward over a global batch of `batch_size` samples
    (default --global-batch-size; Megatron-LM's formula)."""
    heads, layers, hidden = args.num_attention_heads, args.num_layers, args.hidden_size
    kv_channels = args.kv_channels or hidden // heads
    query_ratio = kv_channels * heads / hidden
    routed = 1 if args.num_experts is None else args.moe_router_topk
    ffn = args.ffn_hidden_size if args.num_experts is None else args.moe_ffn_hidden_size
    gated = 1.5 if gated_mlp(args) else 1.0
    tokens = (batch_size or args.global_batch_size) * args.seq_length
    return 12.0 * tokens * layers * hidden * hidden * (
        (1 + args.num_query_groups / heads + args.seq_length / hidden) * query_ratio
        + ffn / hidden * routed * gated
        + args.padded_vocab_size / (2 * layers * hidden)
    )


def params_l2_norm(model: List[torch.nn.Module]) -> float:
    """L2 norm of the whole model's parameters, each counted once: tensor-parallel copies and
    the pipeline's shared-embedding copy are skipped, then the shards' squares are summed over
    the ranks that hold them (Megatron-LM's calc_params_l2_norm). Every rank gets the norm."""
    dense, expert = [], []
    for chunk in model:
        for param in chunk.parameters():
            if not (param.requires_grad and param_is_not_shared(param)
                    and param_is_not_tensor_parallel_duplicate(param)):
                continue
            # Expert weights are sharded over the expert-parallel ranks, not replicated.
            (dense if getattr(param, "allreduce", True) else expert).append(param)
    groups = (parallel_state.get_model_parallel_group(),
              parallel_state.get_expert_tensor_model_pipeline_parallel_group())
    total = 0.0
    for params, group in zip((dense, expert), groups):
        squares = torch.zeros(1, dtype=torch.float32, device=torch.cuda.current_device())
        for param in params:
            squares += param.detach().float().pow(2).sum()
        torch.distributed.all_reduce(squares, group=group)
        total += squares.item()
    return total ** 0.5


def training_log_line(args: argparse.Namespace, iteration: int, consumed_samples: int,
                      elapsed_ms: float, learning_rate: float, loss: Optional[float],
                      loss_scale: float, grad_norm: Optional[float], skipped: int,
                      nan_iterations: int, world_size: int, num_zeros: Optional[float] = None,
                      params_norm: Optional[float] = None, batch_size: Optional[int] = None,
                      metrics: Optional[Dict[str, float]] = None) -> str:
    """`batch_size`: this iteration's global batch size (--rampup-batch-size grows it);
    `metrics`: what the loss function reports besides the loss (DPO's rewards), after it."""
    batch_size = batch_size or args.global_batch_size
    seconds = elapsed_ms / 1000.0
    tflops = flops_per_iteration(args, batch_size) / (seconds * 1e12 * world_size)
    tokens_per_device = batch_size * args.seq_length / seconds / world_size
    fields = [
        f" [{datetime.now().strftime('%Y-%m-%d %H:%M:%S')}] iteration {iteration:8d}/"
        f"{args.train_iters:8d}",
        f"consumed samples: {consumed_samples:12d}",
        f"elapsed time per iteration (ms): {elapsed_ms:.1f}",
        f"throughput per GPU (TFLOP/s/GPU): {tflops:.3f}",
        f"tokens per second per device: {tokens_per_device:.1f}",
        f"learning rate: {learning_rate:.6E}",
        f"global batch size: {batch_size:5d}",
    ]
    if loss is not None:
        fields.append(f"lm loss: {loss:.6E}")
    fields += [f"{name}: {value:.6E}" for name, value in (metrics or {}).items()]
    fields.append(f"loss scale: {loss_scale:.1f}")
    if grad_norm is not None:
        fields.append(f"grad norm: {grad_norm:.3f}")
    if num_zeros is not None:
        fields.append(f"num zeros: {num_zeros:.1f}")
    if params_norm is not None:
        fields.append(f"params norm: {params_norm:.3f}")
    fields += [f"number of skipped iterations: {skipped:3d}",
               f"number of nan iterations: {nan_iterations:3d}"]
    return " | ".join(fields) + " |"

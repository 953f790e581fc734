"""The planner's table: per pipeline stage, what one rank holds, the peak and whether it fits."""
from __future__ import annotations

import argparse
from typing import List, Optional

from modellink.plan.memory import MemoryPlan, param_bytes


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def render(args: argparse.Namespace, plan: MemoryPlan, device_memory: Optional[float]) -> str:
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    lines: List[str] = [
        f"layout: {args.world_size} devices = TP {tp} x PP {pp} x CP {cp} x DP "
        f"{args.data_parallel_size} (EP {args.expert_model_parallel_size}, VPP "
        f"{args.virtual_pipeline_model_parallel_size or 1}, SP {'on' if args.sequence_parallel else 'off'}), "
        f"micro-batch {args.micro_batch_size} x seq {args.seq_length}, "
        f"{args.num_microbatches} micro-batches per step",
        f"weights {param_bytes(args)} B/param; {plan.optimizer_kind} optimizer, state split over "
        f"{plan.dense_shards} ranks (experts: {plan.expert_shards}); recompute "
        f"{args.recompute_granularity or 'off'}",
        f"{'stage':>5} {'params':>12} {'weights':>11} {'grads':>11} {'optimizer':>11} "
        f"{'act/mb':>11} {'in flight':>9} {'activations':>12} {'peak':>11}",
    ]
    for s in plan.stages:
        a = s.activations
        lines.append(f"{s.stage:>5} {s.elements.dense + s.elements.experts:>12,} "
                     f"{gib(s.weights):>11} {gib(s.grads):>11} {gib(s.optimizer):>11} "
                     f"{gib(a.per_microbatch):>11} {a.in_flight:>9} {gib(a.total):>12} "
                     f"{gib(s.peak):>11}")
    top = plan.peak_stage
    tokens = args.seq_length // cp * args.micro_batch_size
    lines.append(f"activations per layer and token on one rank (bytes; x {tokens} tokens per "
                 f"micro-batch): " + "; ".join(f"{name} {value:.1f}"
                                               for name, value in top.activations.layer_terms.items()))
    lines.append(f"peak: {gib(plan.peak)} on pipeline stage {top.stage} = weights + grads + "
                 f"optimizer + max(activations, fp32 step gradients {gib(top.step_grads)})")
    if device_memory is not None:
        verdict = "fits" if plan.peak <= device_memory else "does NOT fit"
        lines.append(f"device memory {gib(device_memory)}: {verdict} "
                     f"({100 * plan.peak / device_memory:.0f}% before allocator overhead, "
                     f"communication buffers and the framework's own workspace)")
    return "\n".join(lines)

"""The planner's table: per pipeline stage, what one rank holds, the peak and whether it fits."""
from __future__ import annotations

import argparse
from typing import List, Optional

from modellink.plan.kv_cache import kv_cache_bytes
from modellink.plan.memory import MemoryPlan, param_bytes
from modellink.plan.search import FORMULAS, Layout


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
                     f"{gib(a.per_microbatch):>11} {a.in_flight:>9g} {gib(a.total):>12} "
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


def _key_value_width(args: argparse.Namespace) -> str:
    if args.multi_head_latent_attention:
        return "(qk-nope + qk-rope + v head dims)"
    return "2 x head dim"


def render_inference(args: argparse.Namespace, plan: MemoryPlan,
                     device_memory: Optional[float]) -> str:
    """Generation (--inference): per pipeline stage, the weights and the KV cache one rank
    holds; no gradients, optimizer state or stored activations."""
    lines: List[str] = [
        f"inference: {args.world_size} devices = TP {args.tensor_model_parallel_size} x PP "
        f"{args.pipeline_model_parallel_size} x DP {args.data_parallel_size}, batch "
        f"{args.micro_batch_size} x max-length {args.max_length}; KV cache = layers/PP x "
        f"kv heads/TP x {_key_value_width(args)} x max-length x batch x {param_bytes(args)} B",
        f"{'stage':>5} {'weights':>11} {'KV cache':>11} {'total':>11}"]
    totals = []
    for s in plan.stages:
        cache = kv_cache_bytes(args, s.stage)
        totals.append(s.weights + cache)
        lines.append(f"{s.stage:>5} {gib(s.weights):>11} {gib(cache):>11} {gib(totals[-1]):>11}")
    peak = max(totals)
    lines.append(f"peak: {gib(peak)} (weights + KV cache; logits and one step's activations "
                 f"come on top)")
    if device_memory is not None:
        verdict = "fits" if peak <= device_memory else "does NOT fit"
        lines.append(f"device memory {gib(device_memory)}: {verdict} "
                     f"({100 * peak / device_memory:.0f}%)")
    return "\n".join(lines)


def render_search(layouts: List[Layout], devices: int, device_memory: float, top: int) -> str:
    """The `top` best layouts that fit, then the cost formulas."""
    if not layouts:
        return (f"no layout of {devices} devices fits {gib(device_memory)} (tried TP x PP x CP "
                f"x DP, recompute off/selective/full, with and without the distributed optimizer)")
    lines = [f"{len(layouts)} layouts of {devices} devices fit {gib(device_memory)}; the best "
             f"{min(top, len(layouts))}:",
             f"{'TP':>3} {'PP':>3} {'CP':>3} {'DP':>3} {'EP':>3} {'recompute':>9} "
             f"{'dist-opt':>8} {'peak':>11} {'bubble':>7} {'TP GiB':>8} {'DP GiB':>8} "
             f"{'PP GiB':>8} {'CP GiB':>8} {'total GiB':>9}"]
    for layout in layouts[:top]:
        a, c = layout.args, layout.comm
        lines.append(
            f"{a.tensor_model_parallel_size:>3} {a.pipeline_model_parallel_size:>3} "
            f"{a.context_parallel_size:>3} {a.data_parallel_size:>3} "
            f"{a.expert_model_parallel_size:>3} {layout.recompute:>9} "
            f"{'yes' if a.use_distributed_optimizer else 'no':>8} {gib(layout.plan.peak):>11} "
            f"{layout.bubble:>7.3f} " + " ".join(f"{c[k] / 2**30:>8.3f}" for k in c)
            + f" {layout.comm_bytes / 2**30:>9.3f}")
    return "\n".join(lines + list(FORMULAS))

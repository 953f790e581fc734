"""`--search`: every TP x PP x CP x DP (x EP) layout of N devices, with each recompute setting
and with and without the distributed optimizer, that the flag validation accepts and whose
planned peak fits the device memory, ranked by a stated cost: first the pipeline bubble
fraction, then the bytes each rank sends per step, then how much forward work recompute
repeats. Bandwidths differ per machine, so the two
are listed side by side rather than folded into one time.
"""
from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence

from modellink.argument_errors import ArgumentError
from modellink.plan.memory import MemoryPlan, estimate, param_bytes

FORMULAS = (
    "cost = (bubble, bytes sent per rank per step, recompute off < selective < full, peak), "
    "smaller first; m micro-batches, L layers, s seq, b micro-batch, h hidden, w bytes/element, "
    "P_p parameters of the rank, g kv heads, d head dim",
    "bubble = (PP - 1) / (m + PP - 1) / VPP",
    "TP = 4 all-reduces x L/PP x m x 2(TP - 1)/TP x (s/CP) b h w  (2 forward, 2 backward; "
    "all-gather + reduce-scatter under SP move the same bytes)",
    "DP = 2(D - 1)/D x P_p x grad bytes  (D = DP x CP; all-reduce, or reduce-scatter + "
    "all-gather with the distributed optimizer)",
    "PP = 2 x m x (s/CP) b h w  (activations forward, their gradients backward)",
    "CP = 3 x L/PP x m x (CP - 1) x 2 (s/CP) b (g/TP) d w  (K/V ring forward, K/V and their "
    "gradients backward)",
)

_RECOMPUTE = {
    "off": [],
    "selective": ["--recompute-granularity", "selective"],
    "full": ["--recompute-granularity", "full", "--recompute-method", "uniform",
             "--recompute-num-layers", "1"],
}


@dataclass(frozen=True)
class Layout:
    args: argparse.Namespace
    plan: MemoryPlan
    recompute: str
    bubble: float
    comm: Dict[str, float]

    @property
    def comm_bytes(self) -> float:
        return sum(self.comm.values())


def _divisors(n: int) -> List[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def communication(args: argparse.Namespace, plan: MemoryPlan) -> Dict[str, float]:
    """Bytes one rank of the busiest stage sends per step, by parallelism (FORMULAS)."""
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    m, w, h = args.num_microbatches, param_bytes(args), args.hidden_size
    tokens = args.seq_length // cp * args.micro_batch_size
    layers = args.num_layers / pp
    d = args.kv_channels or h // args.num_attention_heads
    shards = args.data_parallel_size * cp
    stage = plan.peak_stage
    grad_bytes = stage.grads
    return {
        "TP": 4 * layers * m * 2 * (tp - 1) / tp * tokens * h * w,
        "DP": 2 * (shards - 1) / shards * grad_bytes,
        "PP": 2 * m * tokens * h * w if pp > 1 else 0.0,
        "CP": 3 * layers * m * (cp - 1) * 2 * tokens * args.num_query_groups / tp * d * w,
    }


def bubble(args: argparse.Namespace) -> float:
    pp, m = args.pipeline_model_parallel_size, args.num_microbatches
    return (pp - 1) / (m + pp - 1) / (args.virtual_pipeline_model_parallel_size or 1)


def _without_layout(argv: Sequence[str]) -> List[str]:
    """The user's flags less the ones the search sets."""
    valued = {"--tensor-model-parallel-size", "--pipeline-model-parallel-size",
              "--context-parallel-size", "--expert-model-parallel-size",
              "--recompute-granularity", "--recompute-method", "--recompute-num-layers"}
    out: List[str] = []
    skip = False
    for flag in argv:
        if skip:
            skip = False
        elif flag in valued:
            skip = True
        elif flag not in ("--use-distributed-optimizer", "--sequence-parallel"):
            out.append(flag)
    return out


def search(argv: Sequence[str], devices: int, memory: float,
           parse: Callable[[List[str]], argparse.Namespace]) -> List[Layout]:
    """Every layout `parse` (the planner's flag parsing and validation) accepts for `devices`
    whose peak fits `memory`, best first. SP is on wherever TP > 1 (it only saves memory)."""
    base = _without_layout(argv)
    moe = "--num-experts" in base
    found: List[Layout] = []
    valid, first_error = 0, None
    for tp, pp, cp in itertools.product(_divisors(devices), repeat=3):
        if devices % (tp * pp * cp):
            continue
        for ep in (_divisors(devices // (tp * pp)) if moe else [1]):
            for (name, recompute), distributed in itertools.product(_RECOMPUTE.items(),
                                                                    (False, True)):
                flags = base + ["--tensor-model-parallel-size", str(tp),
                                "--pipeline-model-parallel-size", str(pp),
                                "--context-parallel-size", str(cp)] + recompute
                flags += ["--expert-model-parallel-size", str(ep)] if moe else []
                flags += ["--sequence-parallel"] if tp > 1 else []
                flags += ["--use-distributed-optimizer"] if distributed else []
                try:
                    args = parse(flags)
                except ArgumentError as error:
                    first_error = first_error or error
                    continue
                valid += 1
                if distributed and args.data_parallel_size * cp == 1:
                    continue  # nothing to shard: the same layout as without it
                plan = estimate(args)
                if plan.peak <= memory:
                    found.append(Layout(args, plan, name, bubble(args),
                                        communication(args, plan)))
    if not valid:
        raise ArgumentError(f"--search: no layout of {devices} devices is valid for these flags "
                            f"(TP x PP x CP x DP = 1 x 1 x 1 x {devices} says: {first_error})")
    order = list(_RECOMPUTE)
    return sorted(found, key=lambda layout: (layout.bubble, layout.comm_bytes,
                                             order.index(layout.recompute), layout.plan.peak))

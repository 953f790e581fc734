"""Context-parallel flags (ModelLink's names and defaults) and their checks against the model,
the data and the other parallel sizes, so a run that context parallelism cannot serve stops at
start-up with a one-line error instead of deep inside attention or with a wrong loss.

`--cp-attention-mask-type causal` promises that batches carry no per-sample attention mask;
`general` lets the batch's global [b, 1, S, S] mask through to every algorithm. Data that makes
masks (--reset-attention-mask, left-padded or packed instruction samples) therefore needs
`general`; the packed-rows check runs with the data checks (training/data/datasets.py).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from modellink.argument_errors import require
from modellink.ops.context_parallel import ALGORITHMS, ContextParallelSettings
from modellink.ops.ulysses_attention import kv_repeat_factor

_RING = ("megatron_cp_algo", "hybrid_cp_algo")


def add_context_parallel_arguments(group: argparse._ArgumentGroup) -> None:
    """ModelLink's context-parallel flags, beside --context-parallel-size."""
    group.add_argument("--context-parallel-algo", default="ulysses_cp_algo", choices=ALGORITHMS,
                       help="ulysses_cp_algo: all-to-all to whole sequences for a share of the "
                            "heads; megatron_cp_algo: ring attention; hybrid_cp_algo: Ulysses "
                            "inside groups of --ulysses-degree-in-cp ranks, ring across them")
    group.add_argument("--ulysses-degree-in-cp", type=int, default=None,
                       help="hybrid_cp_algo: ranks per Ulysses group (divides "
                            "--context-parallel-size)")
    group.add_argument("--cp-attention-mask-type", default="causal",
                       choices=["causal", "general"],
                       help="causal: batches carry no attention mask; general: the batch's "
                            "mask (packed samples) is applied under context parallelism")
    group.add_argument("--use-cp-send-recv-overlap", action="store_true",
                       help="ring attention: overlap the next key/value transfer with the "
                            "current block")
    group.add_argument("--kv-head-repeat-before-uly-alltoall", action="store_true",
                       help="GQA with Ulysses: repeat key/value heads that the Ulysses degree "
                            "does not divide before the all-to-all")


def ulysses_degree(args: argparse.Namespace) -> Optional[int]:
    """Ranks sharing one sequence by all-to-all (None: ring attention only)."""
    if args.context_parallel_algo == "ulysses_cp_algo":
        return args.context_parallel_size
    if args.context_parallel_algo == "hybrid_cp_algo":
        return args.ulysses_degree_in_cp
    return None


def context_parallel_settings(args: argparse.Namespace) -> Optional[ContextParallelSettings]:
    """What the layer spec hands ContextParallelAttention; None without context parallelism."""
    if args.context_parallel_size == 1:
        return None
    return ContextParallelSettings(
        algo=args.context_parallel_algo, ulysses_degree=ulysses_degree(args) or 1,
        send_recv_overlap=args.use_cp_send_recv_overlap,
        kv_head_repeat=args.kv_head_repeat_before_uly_alltoall)


def hierarchical_sizes(args: argparse.Namespace) -> Optional[List[int]]:
    """megatron-core's hierarchical CP groups for hybrid_cp_algo: [Ulysses, ring]."""
    if args.context_parallel_size == 1 or args.context_parallel_algo != "hybrid_cp_algo":
        return None
    degree = args.ulysses_degree_in_cp
    return [degree, args.context_parallel_size // degree]


def validate_context_parallel_args(args: argparse.Namespace) -> None:
    """Run after the model shape is known (query groups, features)."""
    cp, algo = args.context_parallel_size, args.context_parallel_algo
    if cp == 1:
        _note_unused(args, "with --context-parallel-size 1")
        return
    seq, tp = args.seq_length, args.tensor_model_parallel_size
    require(seq % (2 * cp) == 0,
            f"--seq-length {seq} does not divide into 2 x --context-parallel-size {cp} = "
            f"{2 * cp} equal chunks (each rank holds two, for causal load balance)")
    require(not args.sequence_parallel or (seq // cp) % tp == 0,
            f"--sequence-parallel: the {seq // cp} positions per context-parallel rank do not "
            f"divide among --tensor-model-parallel-size {tp}")
    if algo == "hybrid_cp_algo":
        degree = args.ulysses_degree_in_cp
        require(degree is not None, "--context-parallel-algo hybrid_cp_algo needs "
                                    "--ulysses-degree-in-cp")
        require(degree >= 1 and cp % degree == 0 and cp // degree > 1,
                f"--ulysses-degree-in-cp {degree} must divide --context-parallel-size {cp} "
                f"and leave at least two ring ranks")
    degree = ulysses_degree(args)
    if degree is not None:
        kv_repeat_factor(args.num_attention_heads // tp, args.num_query_groups // tp, degree,
                         args.kv_head_repeat_before_uly_alltoall)
    if algo in _RING:
        for flag, present in (("--attention-dropout above 0", args.attention_dropout > 0),
                              ("--position-embedding-type alibi",
                               args.position_embedding_type == "alibi"),
                              ("--attn-logit-softcapping", args.attn_logit_softcapping)):
            require(not present, f"{flag} is not supported with --context-parallel-algo {algo} "
                                 f"(ring attention); use ulysses_cp_algo")
    if args.cp_attention_mask_type == "causal":
        for flag, present in (("--reset-attention-mask", args.reset_attention_mask),
                              ("--tokenizer-padding-side left",
                               args.is_instruction_dataset
                               and args.tokenizer_padding_side == "left")):
            require(not present, f"{flag} gives batches an attention mask: with "
                                 f"--context-parallel-size {cp} add "
                                 f"--cp-attention-mask-type general")
    _note_unused(args, f"with --context-parallel-algo {algo}")


def _note_unused(args: argparse.Namespace, context: str) -> None:
    """Flags ModelLink's scripts pass that the chosen algorithm does not use: named in the
    start-up log, as ModelLink accepts them."""
    cp, algo = args.context_parallel_size, args.context_parallel_algo
    unused = []
    if args.ulysses_degree_in_cp is not None and (cp == 1 or algo != "hybrid_cp_algo"):
        unused.append("--ulysses-degree-in-cp")
    if args.use_cp_send_recv_overlap and (cp == 1 or algo not in _RING):
        unused.append("--use-cp-send-recv-overlap")
    if args.kv_head_repeat_before_uly_alltoall and (cp == 1 or ulysses_degree(args) is None):
        unused.append("--kv-head-repeat-before-uly-alltoall")
    args.compatibility_notes.extend(f"{flag} has no effect {context}" for flag in unused)

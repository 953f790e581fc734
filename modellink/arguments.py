"""The training command line: Megatron-LM's flag names and defaults plus ModelLink's extras.

`parse_args()` returns a validated namespace with the derived sizes filled in (data-parallel
size, padded vocabulary, per-stage layer counts). Every error is a one-line `ArgumentError`
naming the flag at fault, raised before anything touches disk or the network.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from typing import List, Optional, Sequence

from modellink.argument_errors import ArgumentError, require
from modellink.context_parallel_args import (add_context_parallel_arguments,
                                             validate_context_parallel_args)
from modellink.data.tokenizers import add_tokenizer_arguments
from modellink.modellink_flags import add_unsupported_flags, no_effect_notes
from modellink.models.feature_args import add_model_feature_arguments, validate_model_features
from modellink.models.mla import add_mla_arguments, validate_mla_args
from modellink.models.moe import add_moe_arguments, validate_moe_args
from modellink.training.finetune_args import add_finetune_arguments, validate_finetune_args
from modellink.training.lora_args import add_lora_arguments, validate_lora_args
from modellink.training.posttrain.args import add_posttrain_arguments, validate_posttrain_args
from modellink.training.ha.args import add_resilience_arguments, validate_resilience_args
from modellink.training.checkpoint.checkpoint_args import load_args_from_checkpoint
from modellink.training.monitoring.timing import add_timing_arguments
from modellink.training.sample_schedule import (add_sample_schedule_arguments,
                                                validate_sample_schedule)
from modellink.writable import writable_dir_problem


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits with usage text; we want one line
        raise ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(description="modellink pretraining", allow_abbrev=False)
    _add_model_args(parser)
    add_model_feature_arguments(parser)
    _add_parallel_args(parser)
    _add_training_args(parser)
    _add_mixed_precision_args(parser)
    add_moe_arguments(parser)
    add_mla_arguments(parser)
    _add_data_args(parser)
    add_tokenizer_arguments(parser)
    add_finetune_arguments(parser)
    add_lora_arguments(parser)
    add_posttrain_arguments(parser)
    _add_checkpoint_args(parser)
    _add_logging_args(parser)
    _add_fused_op_args(parser)
    add_resilience_arguments(parser)
    add_unsupported_flags(parser)
    return parser


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--num-layers", type=int, default=None)
    g.add_argument("--hidden-size", type=int, default=None)
    g.add_argument("--ffn-hidden-size", type=int, default=None,
                   help="default: 4*hidden, or 8/3*hidden rounded to 64 with --swiglu")
    g.add_argument("--num-attention-heads", type=int, default=None)
    g.add_argument("--kv-channels", type=int, default=None)
    g.add_argument("--qk-layernorm", action="store_true",
                   help="normalise each head's queries and keys (a --normalization norm over "
                        "the head width) before attention")
    g.add_argument("--group-query-attention", action="store_true")
    g.add_argument("--num-query-groups", type=int, default=1)
    g.add_argument("--seq-length", type=int, default=None)
    g.add_argument("--max-position-embeddings", type=int, default=None)
    g.add_argument("--position-embedding-type", default="learned_absolute",
                   choices=["learned_absolute", "rope", "alibi", "none"])
    g.add_argument("--use-rotary-position-embeddings", action="store_const", const="rope",
                   dest="position_embedding_type",
                   help="Megatron-LM's older spelling of --position-embedding-type rope")
    g.add_argument("--rotary-base", type=float, default=10000,
                   help="RoPE base (theta); ModelLink's scripts write 1e6 or 500000")
    g.add_argument("--rotary-percent", type=float, default=1.0,
                   help="fraction of each head's channels RoPE rotates (ChatGLM: 0.5)")
    g.add_argument("--rotary-interleaved", "--use-glm-rope", action="store_true",
                   dest="rotary_interleaved",
                   help="rotate adjacent channel pairs (GPT-J / ChatGLM) instead of halves; "
                        "--use-glm-rope is ModelLink's spelling")
    g.add_argument("--no-rope-fusion", action="store_false", dest="apply_rope_fusion",
                   help="Megatron-LM's switch off Transformer Engine's fused RoPE, which is "
                        "never used here (modellink's fused RoPE: --use-fused-rotary-pos-emb)")
    g.add_argument("--rope-scaling-type", default=None, choices=["llama3", "yarn"],
                   help="RoPE frequency scaling for long context (Llama 3.x / YaRN)")
    g.add_argument("--use-rope-scaling", action="store_true",
                   help="Megatron-LM's switch for Llama 3.x scaling: --rope-scaling-type llama3")
    g.add_argument("--rope-scaling-factor", type=float, default=None,
                   help="default 8.0 for llama3 (Megatron-LM), 1.0 for yarn (ModelLink)")
    g.add_argument("--low-freq-factor", type=float, default=None, help="llama3; default 1.0")
    g.add_argument("--high-freq-factor", type=float, default=None, help="llama3; default 4.0")
    g.add_argument("--original-max-position-embeddings",
                   "--rope-scaling-original-max-position-embeddings", type=float, default=None,
                   help="pretraining context length; llama3 default 8192, required for yarn")
    g.add_argument("--rope-scaling-beta-fast", type=int, default=32, help="yarn")
    g.add_argument("--rope-scaling-beta-slow", type=int, default=1, help="yarn")
    g.add_argument("--rope-scaling-mscale", type=float, default=1.0, help="yarn")
    g.add_argument("--rope-scaling-mscale-all-dim", type=float, default=0.0, help="yarn")
    g.add_argument("--normalization", default="LayerNorm", choices=["LayerNorm", "RMSNorm"])
    g.add_argument("--norm-epsilon", type=float, default=1e-5)
    g.add_argument("--swiglu", action="store_true")
    g.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    g.add_argument("--disable-bias-linear", action="store_false", dest="add_bias_linear")
    g.add_argument("--add-qkv-bias", action="store_true",
                   help="bias on the QKV projection even with --disable-bias-linear (Qwen)")
    g.add_argument("--add-dense-bias", action="store_true",
                   help="bias on the attention output projection even with "
                        "--disable-bias-linear (InternLM)")
    g.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    g.add_argument("--padded-vocab-size", type=int, default=None)
    g.add_argument("--init-method-std", type=float, default=0.02)
    g.add_argument("--attention-dropout", type=float, default=0.1)
    g.add_argument("--hidden-dropout", type=float, default=0.1)
    g.add_argument("--attention-softmax-in-fp32", action="store_true")
    g.add_argument("--apply-query-key-layer-scaling", action="store_true")
    g.add_argument("--no-masked-softmax-fusion", action="store_false",
                   dest="masked_softmax_fusion",
                   help="accepted for script compatibility: the fused masked softmax is never "
                        "used here (the start-up log says so)")
    g.add_argument("--use-mcore-models", action="store_true",
                   help="accepted for script compatibility: megatron-core GPTModel is the only model")
    g.add_argument("--transformer-impl", default="local", choices=["local"],
                   help="megatron-core local layers with modellink operators (no Transformer Engine)")


def _add_parallel_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    g.add_argument("--num-layer-list", type=str, default=None,
                   help="comma-separated layer count per pipeline stage, e.g. 6,10")
    g.add_argument("--sequence-parallel", action="store_true")
    g.add_argument("--context-parallel-size", type=int, default=1)
    add_context_parallel_arguments(g)
    g.add_argument("--expert-model-parallel-size", type=int, default=1)
    g.add_argument("--use-distributed-optimizer", action="store_true")
    g.add_argument("--overlap-grad-reduce", action="store_true")
    g.add_argument("--overlap-param-gather", action="store_true")
    g.add_argument("--ddp-bucket-size", type=int, default=None)
    g.add_argument("--device", default="auto", choices=["auto", "npu", "cuda", "cpu"])
    g.add_argument("--jit-compile", action="store_true",
                   help="NPU: torch_npu compiles operators just in time (set_compile_mode); "
                        "logged and ignored on cuda and cpu, as ModelLink documents it NPU-only")
    g.add_argument("--distributed-backend", default=None, choices=["nccl", "gloo", "hccl"],
                   help="default follows --device: hccl on npu, nccl on cuda, gloo on cpu")
    g.add_argument("--distributed-timeout-minutes", type=int, default=45,
                   help="ModelLink's default; collectives that wait longer fail")
    g.add_argument("--local-rank", "--local_rank", type=int, default=None,
                   help="set by older launchers; the LOCAL_RANK variable wins")


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, required=True)
    g.add_argument("--global-batch-size", type=int, default=None)
    g.add_argument("--train-iters", type=int, default=None,
                   help="iterations to train (or size the run with --train-samples)")
    add_sample_schedule_arguments(g)
    g.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    g.add_argument("--lr", type=float, required=True)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", default="linear",
                   choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"])
    g.add_argument("--lr-decay-iters", type=int, default=None)
    g.add_argument("--lr-warmup-fraction", type=float, default=None)
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-warmup-init", type=float, default=0.0)
    g.add_argument("--lr-wsd-decay-style", default="exponential",
                   choices=["exponential", "linear", "cosine"])
    g.add_argument("--lr-wsd-decay-iters", type=int, default=None)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--start-weight-decay", type=float, default=None)
    g.add_argument("--end-weight-decay", type=float, default=None)
    g.add_argument("--weight-decay-incr-style", default="constant",
                   choices=["constant", "linear", "cosine"])
    g.add_argument("--override-opt_param-scheduler", "--override-opt-param-scheduler",
                   action="store_true", dest="override_opt_param_scheduler",
                   help="on resume, take the LR/weight-decay schedule from these flags, not the "
                        "checkpoint (the step count still comes from the checkpoint)")
    g.add_argument("--use-checkpoint-opt_param-scheduler", "--use-checkpoint-opt-param-scheduler",
                   action="store_true", dest="use_checkpoint_opt_param_scheduler",
                   help="on resume, keep the checkpoint's LR/weight-decay schedule whatever these "
                        "flags say (without either flag a changed schedule is an error)")
    g.add_argument("--clip-grad", type=float, default=1.0)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.999)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--sgd-momentum", type=float, default=0.9)
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--use-cpu-initialization", action="store_true",
                   help="initialise every weight from its global name and seed, so any parallel "
                        "layout starts from the same model")
    g.add_argument("--recompute-granularity", default=None, choices=["full", "selective"])
    g.add_argument("--recompute-method", default=None, choices=["uniform", "block"])
    g.add_argument("--recompute-num-layers", type=int, default=None)
    g.add_argument("--recompute-modules", nargs="+", default=None,
                   choices=["core_attn", "mlp", "moe", "moe_act"],
                   help="what --recompute-granularity selective recomputes (default core_attn)")
    g.add_argument("--recompute-activation-function", action="store_true",
                   help="recompute the MLP activation in backward instead of keeping its output")
    g.add_argument("--plan-only", action="store_true",
                   help="print the memory plan of this run (modellink/plan) and exit")
    g.add_argument("--skip-train", action="store_true",
                   help="no training: load, then evaluate on the validation set once")
    g.add_argument("--manual-gc", action="store_true",
                   help="turn Python's automatic garbage collector off and collect only every "
                        "--manual-gc-interval iterations, so collections happen on every rank "
                        "at the same step")
    g.add_argument("--manual-gc-interval", type=int, default=0,
                   help="with --manual-gc: iterations between collections (0: never)")
    g.add_argument("--no-manual-gc-eval", action="store_false", dest="manual_gc_eval",
                   help="with --manual-gc: do not collect after each evaluation")
    g.add_argument("--no-gradient-accumulation-fusion", action="store_false",
                   dest="gradient_accumulation_fusion",
                   help="add weight gradients into the gradient buffer in a separate pass (fused "
                        "into the weight-gradient matmul by default on CPU; GPUs and NPUs "
                        "always take the separate pass, the fused one needs apex)")


def _add_mixed_precision_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mixed precision")
    g.add_argument("--fp16", action="store_true")
    g.add_argument("--bf16", action="store_true")
    g.add_argument("--loss-scale", type=float, default=None, help="static loss scale (fp16)")
    g.add_argument("--initial-loss-scale", type=float, default=2.0**32)
    g.add_argument("--min-loss-scale", type=float, default=1.0)
    g.add_argument("--loss-scale-window", type=float, default=1000)
    g.add_argument("--hysteresis", type=int, default=2)
    g.add_argument("--accumulate-allreduce-grads-in-fp32", action="store_true")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data-path", nargs="*", default=None,
                   help="prefixes, optionally weighted: 0.3 prefix_a 0.7 prefix_b")
    g.add_argument("--split", default=None,
                   help="train,validation,test weights dividing --data-path (default 969,30,1)")
    g.add_argument("--train-data-path", nargs="*", default=None,
                   help="the train split's own prefixes, weighted as --data-path (instead of "
                        "--data-path and --split)")
    g.add_argument("--valid-data-path", nargs="*", default=None,
                   help="the validation split's own prefixes, weighted as --data-path")
    g.add_argument("--test-data-path", nargs="*", default=None,
                   help="the test split's own prefixes, weighted as --data-path")
    g.add_argument("--mock-data", action="store_true")
    g.add_argument("--data-cache-path", default=None)
    g.add_argument("--no-shared-storage", action="store_true",
                   help="nodes do not share a file system: the first rank of every node "
                        "builds that node's dataset index caches")
    g.add_argument("--num-workers", type=int, default=0)
    g.add_argument("--reset-position-ids", action="store_true")
    g.add_argument("--reset-attention-mask", action="store_true")
    g.add_argument("--eod-mask-loss", action="store_true")
    g.add_argument("--no-mmap-bin-files", action="store_false", dest="mmap_bin_files")


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpointing")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--no-save-optim", action="store_true")
    g.add_argument("--no-save-rng", action="store_true")
    g.add_argument("--no-load-optim", action="store_true")
    g.add_argument("--no-load-rng", action="store_true")
    g.add_argument("--exit-interval", type=int, default=None,
                   help="stop (saving first when --save is set) when the iteration is a multiple")
    g.add_argument("--finetune", action="store_true",
                   help="load model weights only and restart the iteration count at 0")
    g.add_argument("--exit-on-missing-checkpoint", action="store_true",
                   help="a --load with no checkpoint is an error instead of a warning and a "
                        "start from random weights (it always is with --finetune)")
    g.add_argument("--use-checkpoint-args", action="store_true",
                   help="take the model's sizes the flags leave out, and always its "
                        "normalization, activation, position embedding, biases and attention "
                        "groups, from the arguments saved in the --load checkpoint")
    g.add_argument("--ckpt-format", default="torch", choices=["torch"],
                   help="Megatron-LM's iter_XXXXXXX/mp_rank_XX/model_optim_rng.pt layout")


def _add_logging_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-interval", type=int, default=100)
    g.add_argument("--eval-interval", type=int, default=1000)
    g.add_argument("--eval-iters", type=int, default=100)
    g.add_argument("--log-params-norm", action="store_true",
                   help="add the L2 norm of all parameters to the log line (params norm:)")
    g.add_argument("--log-num-zeros-in-grad", action="store_true",
                   help="add the number of zero gradient entries to the log line (num zeros:)")
    add_timing_arguments(g)
    g.add_argument("--log-throughput", action="store_true",
                   help="also write the TFLOP/s per device to TensorBoard / W&B as `throughput` "
                        "(the console log line always shows it)")


def _add_fused_op_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fused operators (ModelLink)")
    g.add_argument("--use-flash-attn", action="store_true",
                   help="fused attention: npu_fusion_attention on NPU, flash-attn (or SDPA) on "
                        "CUDA, SDPA on CPU")
    g.add_argument("--use-fused-rmsnorm", action="store_true",
                   help="npu_rms_norm on NPU, torch's fused rms_norm on CUDA")
    g.add_argument("--use-fused-swiglu", action="store_true",
                   help="npu_swiglu on NPU, megatron-core's compiled SwiGLU on CUDA")
    g.add_argument("--use-fused-rotary-pos-emb", action="store_true",
                   help="npu_rotary_mul on NPU, flash-attn's rotary kernel on CUDA")
    g.add_argument("--use-mc2", action="store_true",
                   help="tensor-parallel matmuls fused with their sequence-parallel communication "
                        "(NPU MC2 kernels; elsewhere megatron-core's all-gather/reduce-scatter)")
    g.add_argument("--sliding-window", type=int, default=None,
                   help="query i attends keys i-W..i only")
    g.add_argument("--shape-order", default="SBH", choices=["SBH", "BSH", "BSND", "BNSD"],
                   help="layout handed to npu_fusion_attention (other devices: their kernel's)")
    g.add_argument("--sparse-mode", type=int, default=0, choices=[0, 1, 2, 3, 4],
                   help="npu_fusion_attention mask mode; in modes 0 and 4 --pre-tockens is a "
                        "window on every device")
    g.add_argument("--pre-tockens", type=int, default=65536,
                   help="keys before the query that attention may reach (modes 0 and 4)")
    g.add_argument("--next-tockens", type=int, default=0,
                   help="keys after the query; attention is causal, so only 0 is accepted")


def parse_args(argv: Optional[Sequence[str]] = None, world_size: Optional[int] = None
               ) -> argparse.Namespace:
    """Parse and validate; `world_size` defaults to the WORLD_SIZE torchrun sets."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise ArgumentError(f"unrecognized arguments: {' '.join(unknown)}")
    args.world_size = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", 1))
    validate_args(args)
    return args


# Counts and sizes argparse takes as any number; below these minimums they would divide by zero
# or train on nothing far from the flag (SIGFPE, empty batches, a loop that never logs).
_MINIMUMS = (
    ("num_layers", 1), ("hidden_size", 1), ("ffn_hidden_size", 1), ("num_attention_heads", 1),
    ("kv_channels", 1), ("num_query_groups", 1), ("seq_length", 1), ("max_position_embeddings", 1),
    ("make_vocab_size_divisible_by", 1), ("padded_vocab_size", 1), ("vocab_size", 1),
    ("global_batch_size", 1), ("num_experts", 1), ("moe_ffn_hidden_size", 1),
    ("recompute_num_layers", 1), ("distributed_timeout_minutes", 1), ("ddp_bucket_size", 1),
    ("save_interval", 1), ("exit_interval", 1), ("log_interval", 1), ("eval_interval", 1),
    ("eval_iters", 0), ("num_workers", 0), ("seed", 0), ("lr_decay_iters", 0),
    ("lr_warmup_iters", 0), ("lr_wsd_decay_iters", 0), ("train_samples", 1),
    ("lr_decay_samples", 0), ("lr_warmup_samples", 0), ("lr_wsd_decay_samples", 0),
    ("manual_gc_interval", 0), ("lr", 0), ("min_lr", 0),
    ("clip_grad", 0), ("weight_decay", 0), ("hysteresis", 1), ("loss_scale_window", 1),
)


def _validate_minimums(args: argparse.Namespace) -> None:
    for dest, low in _MINIMUMS:
        value = getattr(args, dest, None)
        if value is not None:
            require(value >= low, f"--{dest.replace('_', '-')} must be >= {low}, got {value}")
    require(args.lr_warmup_fraction is None or 0 <= args.lr_warmup_fraction <= 1,
             f"--lr-warmup-fraction must be in [0, 1], got {args.lr_warmup_fraction}")


def _validate_data_sources(args: argparse.Namespace) -> None:
    per_split = [flag for flag, value in (("--train-data-path", args.train_data_path),
                                          ("--valid-data-path", args.valid_data_path),
                                          ("--test-data-path", args.test_data_path))
                 if value is not None]
    if not per_split:
        if args.split is None:
            args.split = "969, 30, 1"  # Megatron-LM's default
        _validate_split(args.split)
        return
    # As Megatron-LM: one source of data per run.
    for flag, given in (("--data-path", args.data_path is not None),
                        ("--mock-data", args.mock_data), ("--split", args.split is not None)):
        require(not given, f"{per_split[0]} and {flag} are mutually exclusive: with "
                           f"--train/valid/test-data-path each split reads its own data")
    require(args.train_data_path is not None,
            f"{per_split[0]} needs --train-data-path PREFIX [...] for the train split")


# Required unless --use-checkpoint-args fills them in from the checkpoint (as Megatron-LM).
_MODEL_SIZE_FLAGS = ("--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length")


def _require_model_size(args: argparse.Namespace) -> None:
    missing = [flag for flag in _MODEL_SIZE_FLAGS
               if getattr(args, flag[2:].replace("-", "_")) is None]
    require(not missing, f"the following arguments are required: {', '.join(missing)} "
                         f"(or --use-checkpoint-args with --load)")


def _validate_split(split: str) -> None:
    # megatron-core would fail on it deep inside dataset building with a bare ValueError.
    parts = [p.strip() for p in re.split(r"[,/]", split)]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise ArgumentError(f"--split {split!r} must be up to three comma-separated numbers "
                            "(train, validation, test), e.g. 969,30,1") from None
    require(len(weights) <= 3, f"--split {split!r} has {len(weights)} parts; at most three "
                               "(train, validation, test)")
    require(all(w >= 0 and math.isfinite(w) for w in weights) and sum(weights) > 0,
             f"--split {split!r} needs non-negative weights with a positive sum")


def validate_training_run(args: argparse.Namespace) -> None:
    """What only a training run needs (inference and the converter parse with --train-iters 0
    and write nothing): something to train, and output folders it can write, checked now rather
    than at the first save hours later."""
    require(args.train_iters >= 1, f"--train-iters must be >= 1, got {args.train_iters}")
    for flag, path in (("--save", args.save), ("--data-cache-path", args.data_cache_path)):
        problem = path and writable_dir_problem(path)
        require(not problem, f"{flag} {path}: {problem}")


def validate_args(args: argparse.Namespace) -> None:
    """Check sizes against each other and fill in the derived ones; what the start-up log must
    tell about flags that act differently here goes to `args.compatibility_notes`."""
    args.compatibility_notes = no_effect_notes(args)
    if args.use_checkpoint_args:
        taken = load_args_from_checkpoint(args)
        args.compatibility_notes.append(
            f"--use-checkpoint-args: from {args.load}: {', '.join(taken) or 'no change'}")
    _require_model_size(args)
    _validate_minimums(args)
    _validate_data_sources(args)
    _validate_parallel_sizes(args)
    _validate_model_shape(args)
    validate_model_features(args)
    validate_context_parallel_args(args)
    _validate_batch(args)
    _validate_training(args)
    _validate_fused_ops(args)
    validate_mla_args(args)
    validate_resilience_args(args)
    validate_posttrain_args(args)  # before the fine-tuning checks: dpo implies instruction data
    validate_finetune_args(args)
    validate_lora_args(args)


def _validate_parallel_sizes(args: argparse.Namespace) -> None:
    tp, pp, cp = (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                  args.context_parallel_size)
    for name, value in (("--tensor-model-parallel-size", tp), ("--pipeline-model-parallel-size", pp),
                        ("--context-parallel-size", cp),
                        ("--expert-model-parallel-size", args.expert_model_parallel_size)):
        require(value >= 1, f"{name} must be >= 1, got {value}")
    model_parallel = tp * pp * cp
    require(args.world_size % model_parallel == 0,
             f"world size {args.world_size} is not divisible by tensor x pipeline x context "
             f"parallel size {tp} x {pp} x {cp}")
    args.data_parallel_size = args.world_size // model_parallel
    ep = args.expert_model_parallel_size
    if ep > 1:
        require(args.num_experts is not None, "--expert-model-parallel-size > 1 needs --num-experts")
        require(args.data_parallel_size * cp % ep == 0,
                 f"--expert-model-parallel-size {ep} must divide data x context parallel size "
                 f"{args.data_parallel_size * cp}")
    if args.sequence_parallel and tp == 1:
        args.sequence_parallel = False  # as Megatron-LM: sequence parallelism needs TP > 1
    if args.num_experts is not None and tp > 1:
        require(args.sequence_parallel,
                 "--num-experts with --tensor-model-parallel-size > 1 needs --sequence-parallel")
    require(not (args.overlap_param_gather and not args.use_distributed_optimizer),
             "--overlap-param-gather needs --use-distributed-optimizer")


def _validate_model_shape(args: argparse.Namespace) -> None:
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    heads = args.num_attention_heads
    require(heads % tp == 0,
             f"--num-attention-heads {heads} is not divisible by --tensor-model-parallel-size {tp}")
    require(args.hidden_size % heads == 0 or args.kv_channels is not None,
             f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {heads}; "
             "set --kv-channels")
    if args.group_query_attention:
        groups = args.num_query_groups
        require(heads % groups == 0,
                 f"--num-attention-heads {heads} is not divisible by --num-query-groups {groups}")
        require(groups % tp == 0,
                 f"--num-query-groups {groups} is not divisible by --tensor-model-parallel-size {tp}")
    else:
        args.num_query_groups = heads
    if args.ffn_hidden_size is None:
        if args.swiglu:
            args.ffn_hidden_size = int(math.ceil(4 * args.hidden_size * 2 / 3 / 64)) * 64
        else:
            args.ffn_hidden_size = 4 * args.hidden_size
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    require(args.position_embedding_type != "learned_absolute"
             or args.max_position_embeddings >= args.seq_length,
             f"--seq-length {args.seq_length} exceeds --max-position-embeddings "
             f"{args.max_position_embeddings}")
    args.pipeline_layers = _pipeline_layers(args)
    if args.num_experts is not None:
        ep = args.expert_model_parallel_size
        require(args.num_experts % ep == 0,
                 f"--num-experts {args.num_experts} is not divisible by "
                 f"--expert-model-parallel-size {ep}")
        require(1 <= args.moe_router_topk <= args.num_experts,
                 f"--moe-router-topk {args.moe_router_topk} must be in [1, --num-experts]")
        if args.moe_ffn_hidden_size is None:
            args.moe_ffn_hidden_size = args.ffn_hidden_size
    validate_moe_args(args)
    require(args.ffn_hidden_size % tp == 0,
             f"--ffn-hidden-size {args.ffn_hidden_size} is not divisible by "
             f"--tensor-model-parallel-size {tp}")
    require(pp > 1 or args.num_layers_per_virtual_pipeline_stage is None,
             "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1")


def _pipeline_layers(args: argparse.Namespace) -> Optional[List[int]]:
    """Layers per pipeline stage when uneven (`--num-layer-list`), else None."""
    pp, layers = args.pipeline_model_parallel_size, args.num_layers
    vpp_layers = args.num_layers_per_virtual_pipeline_stage
    if args.num_layer_list is not None:
        require(vpp_layers is None,
                 "--num-layer-list cannot be combined with --num-layers-per-virtual-pipeline-stage")
        try:
            counts = [int(x) for x in args.num_layer_list.split(",")]
        except ValueError:
            raise ArgumentError(f"--num-layer-list must be comma-separated integers, "
                                f"got {args.num_layer_list!r}") from None
        require(len(counts) == pp,
                 f"--num-layer-list has {len(counts)} entries but "
                 f"--pipeline-model-parallel-size is {pp}")
        require(all(c >= 1 for c in counts), "--num-layer-list entries must be >= 1")
        require(sum(counts) == layers,
                 f"--num-layer-list sums to {sum(counts)}, not --num-layers {layers}")
        return counts
    require(layers % pp == 0,
             f"--num-layers {layers} is not divisible by --pipeline-model-parallel-size {pp}")
    if vpp_layers is not None:
        require(vpp_layers >= 1 and (layers // pp) % vpp_layers == 0,
                 f"layers per pipeline stage ({layers // pp}) is not divisible by "
                 f"--num-layers-per-virtual-pipeline-stage {vpp_layers}")
        args.virtual_pipeline_model_parallel_size = layers // pp // vpp_layers
        if args.virtual_pipeline_model_parallel_size == 1:
            args.virtual_pipeline_model_parallel_size = None
    return None


def _validate_batch(args: argparse.Namespace) -> None:
    if not hasattr(args, "virtual_pipeline_model_parallel_size"):
        args.virtual_pipeline_model_parallel_size = None
    dp, mbs = args.data_parallel_size, args.micro_batch_size
    require(mbs >= 1, f"--micro-batch-size must be >= 1, got {mbs}")
    if args.global_batch_size is None:
        args.global_batch_size = mbs * dp
    gbs = args.global_batch_size
    require(gbs % (mbs * dp) == 0,
             f"--global-batch-size {gbs} is not divisible by --micro-batch-size {mbs} x "
             f"data-parallel size {dp}")
    args.num_microbatches = gbs // (mbs * dp)
    vpp = args.virtual_pipeline_model_parallel_size
    pp = args.pipeline_model_parallel_size
    if vpp is not None:
        require(args.num_microbatches % pp == 0,
                 f"interleaved pipeline needs the number of micro-batches ({args.num_microbatches}) "
                 f"to be a multiple of --pipeline-model-parallel-size {pp}")


def _validate_training(args: argparse.Namespace) -> None:
    require(not (args.fp16 and args.bf16), "--fp16 and --bf16 are mutually exclusive")
    validate_sample_schedule(args)
    require(args.train_iters >= 0, f"--train-iters must be >= 0, got {args.train_iters}")
    if args.recompute_granularity == "full":
        require(args.recompute_method is not None,
                 "--recompute-granularity full needs --recompute-method uniform|block")
        if args.recompute_num_layers is None:
            args.recompute_num_layers = 1
    if args.recompute_method is not None:
        require(args.recompute_granularity == "full",
                 "--recompute-method needs --recompute-granularity full")
    if args.data_path is None and not args.mock_data and args.train_data_path is None:
        raise ArgumentError("no training data: pass --data-path PREFIX [...], "
                            "--train-data-path PREFIX [...] or --mock-data")
    if args.data_path is not None and args.mock_data:
        raise ArgumentError("--data-path and --mock-data are mutually exclusive")
    if args.save_interval is not None:
        require(args.save is not None, "--save-interval needs --save DIR")
    require(not args.skip_train or args.eval_iters > 0,
            "--skip-train only evaluates: it needs --eval-iters > 0")
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    require(not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
             "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are "
             "mutually exclusive")
    require(args.lr_warmup_fraction is None or args.lr_warmup_iters == 0,
             "--lr-warmup-fraction and --lr-warmup-iters are mutually exclusive")
    if args.start_weight_decay is None:
        args.start_weight_decay = args.weight_decay
    if args.end_weight_decay is None:
        args.end_weight_decay = args.weight_decay


def _validate_fused_ops(args: argparse.Namespace) -> None:
    """Fused-operator, attention-mask, RoPE-scaling and recompute flags (ModelLink's rules)."""
    if args.use_mc2 and not args.sequence_parallel:
        # As ModelLink: MC2 has no communication to fuse, so the run goes on without it.
        args.use_mc2 = False
        args.compatibility_notes.append(
            "--use-mc2 is off: MC2 fuses the tensor-parallel matmuls with sequence-parallel "
            "communication, which needs --tensor-model-parallel-size > 1 and --sequence-parallel")
    require(args.next_tockens == 0, f"--next-tockens {args.next_tockens}: attention is causal, "
                                     "so no key after the query may be attended; use 0")
    require(args.pre_tockens >= 0, f"--pre-tockens must be >= 0, got {args.pre_tockens}")
    if args.sliding_window is not None:
        require(args.sliding_window >= 1,
                 f"--sliding-window must be >= 1, got {args.sliding_window}")
        require(args.sparse_mode in (0, 4), f"--sliding-window needs --sparse-mode 0 or 4 (mode "
                                             f"{args.sparse_mode} ignores the window on NPU)")
    _validate_rotary(args)
    if args.use_rope_scaling and args.rope_scaling_type is None:
        args.rope_scaling_type = "llama3"
    if args.rope_scaling_type is not None:
        require(args.position_embedding_type == "rope",
                 "--rope-scaling-type needs --position-embedding-type rope")
        llama3 = args.rope_scaling_type == "llama3"
        if args.rope_scaling_factor is None:
            args.rope_scaling_factor = 8.0 if llama3 else 1.0
        if args.original_max_position_embeddings is None:
            require(llama3, "--rope-scaling-type yarn needs --original-max-position-embeddings")
            args.original_max_position_embeddings = 8192
        args.low_freq_factor = 1.0 if args.low_freq_factor is None else args.low_freq_factor
        args.high_freq_factor = 4.0 if args.high_freq_factor is None else args.high_freq_factor
        require(args.high_freq_factor > args.low_freq_factor,
                 "--high-freq-factor must be greater than --low-freq-factor")
    if args.recompute_modules is not None:
        require(args.recompute_granularity == "selective",
                 "--recompute-modules needs --recompute-granularity selective")
    if args.recompute_activation_function:
        require(args.recompute_method != "uniform" and args.recompute_granularity != "selective",
                 "--recompute-activation-function cannot be combined with uniform or selective "
                 "recompute (use --recompute-method block for the layers it leaves out)")
        require(args.num_experts is None, "--recompute-activation-function applies to dense "
                                           "MLPs; with --num-experts use --recompute-granularity "
                                           "selective --recompute-modules moe_act")


def _validate_rotary(args: argparse.Namespace) -> None:
    require(0 < args.rotary_percent <= 1,
             f"--rotary-percent must be in (0, 1], got {args.rotary_percent}")
    head_dim = args.kv_channels or args.hidden_size // args.num_attention_heads
    rotated = head_dim * args.rotary_percent
    require(rotated == int(rotated) and int(rotated) % 2 == 0,
             f"--rotary-percent {args.rotary_percent} of {head_dim} channels per head is "
             f"{rotated:g}; RoPE needs an even whole number of channels")
    if args.rotary_interleaved:
        require(args.position_embedding_type == "rope",
                 "--rotary-interleaved needs --position-embedding-type rope")
        # The fused paths (npu_rotary_mul, flash-attn, _RotaryMul) rotate halves only.
        require(not args.use_fused_rotary_pos_emb,
                 "--rotary-interleaved cannot be combined with --use-fused-rotary-pos-emb")

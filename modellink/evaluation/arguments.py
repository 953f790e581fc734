"""Command line of `evaluation.py`: the inference flags plus ModelLink's evaluation flags."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from modellink.arguments import ArgumentError
from modellink.inference.arguments import add_text_generation_args, parse_inference_args

BENCHMARKS = ("mmlu", "ceval", "gsm8k", "boolq", "bbh", "agieval", "human_eval", "exact_match")
LM_EVAL_PREFIX = "lm_eval:"


def _task_name(value: str) -> str:
    if value in BENCHMARKS or value == "ppl" or value.startswith(LM_EVAL_PREFIX):
        return value
    raise argparse.ArgumentTypeError(
        f"unknown task {value!r}; choose from {', '.join(BENCHMARKS)}, ppl or lm_eval:<task>")


def add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    add_text_generation_args(parser)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--task", nargs="+", required=True, type=_task_name,
                   help=f"{' '.join(BENCHMARKS)}, ppl (on --data-path) or lm_eval:<harness task>")
    g.add_argument("--task-data-path", nargs="+", default=[],
                   help="one folder per benchmark task, in the order of --task")
    g.add_argument("--evaluation-batch-size", type=int, default=1)
    g.add_argument("--greedy", action="store_true",
                   help="generation tasks take the most likely token; without it they sample with "
                        "--top-k/--top-p/--temperature when any of those is set")
    g.add_argument("--instruction-template", default=None,
                   help="prompt format with {few_shot_examples} and {question} fields")
    g.add_argument("--no-chat-template", action="store_true",
                   help="never wrap prompts in the tokenizer's chat template")
    g.add_argument("--max-eval-samples", type=int, default=None,
                   help="questions per subject (windows for ppl) at most")
    g.add_argument("--eval-language", default=None, choices=["en", "zh"],
                   help="wording of the MMLU, C-Eval and AGIEval prompts (default: the "
                        "benchmark's own language)")
    g.add_argument("--eval-output", default="evaluation_results.json",
                   help="where the results are written as JSON")
    g.add_argument("--human-eval-timeout", type=float, default=5.0,
                   help="seconds each generated HumanEval program may run")


def parse_evaluation_args(argv: Optional[Sequence[str]] = None,
                          world_size: Optional[int] = None) -> argparse.Namespace:
    args = parse_inference_args(argv, add_evaluation_args, world_size)
    benchmarks = [t for t in args.task if t != "ppl" and not t.startswith(LM_EVAL_PREFIX)]
    if len(args.task_data_path) != len(benchmarks):
        raise ArgumentError(f"--task-data-path needs one folder per benchmark task "
                            f"({', '.join(benchmarks) or 'none'}), got {len(args.task_data_path)}")
    if "ppl" in args.task and not args.data_path:
        raise ArgumentError("--task ppl needs --data-path PREFIX (a Megatron .bin/.idx dataset)")
    if args.evaluation_batch_size < 1:
        raise ArgumentError(f"--evaluation-batch-size must be >= 1, got "
                            f"{args.evaluation_batch_size}")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise ArgumentError(f"--max-eval-samples must be >= 1, got {args.max_eval_samples}")
    return args

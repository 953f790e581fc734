"""Command line of `evaluation.py`: the inference flags plus ModelLink's evaluation flags."""
from __future__ import annotations

import argparse
import math
import os
from typing import Optional, Sequence

from modellink.arguments import ArgumentError
from modellink.evaluation.sandbox import launch
from modellink.inference.arguments import add_text_generation_args, parse_inference_args
from modellink.writable import writable_dir_problem

# ModelLink's evaluation defaults; they apply only when sampling is asked for (see --greedy).
_SAMPLING_DEFAULTS = {"top_k": 0, "top_p": 0.9, "temperature": 0.5}
BENCHMARKS = ("mmlu", "ceval", "gsm8k", "boolq", "bbh", "agieval", "human_eval", "exact_match")
LM_EVAL_PREFIX = "lm_eval:"
# Tasks that read a Megatron dataset from --data-path instead of a --task-data-path folder.
DATASET_TASKS = {"ppl": "a Megatron .bin/.idx dataset",
                 "preference": "a pairwise dataset from AlpacaStylePairwiseHandler",
                 "rm_accuracy": "a pairwise dataset from AlpacaStylePairwiseHandler"}


def _task_name(value: str) -> str:
    if value in BENCHMARKS or value in DATASET_TASKS or value.startswith(LM_EVAL_PREFIX):
        return value
    raise argparse.ArgumentTypeError(
        f"unknown task {value!r}; choose from {', '.join(BENCHMARKS)}, ppl, preference, "
        f"rm_accuracy or lm_eval:<task>")


def add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    add_text_generation_args(parser)
    parser.set_defaults(**_SAMPLING_DEFAULTS)
    g = parser.add_argument_group("evaluation")
    g.add_argument("--task", nargs="+", required=True, type=_task_name,
                   help=f"{' '.join(BENCHMARKS)}, ppl, preference or rm_accuracy (on "
                        f"--data-path) or lm_eval:<harness task>")
    g.add_argument("--task-data-path", nargs="+", default=[],
                   help="one folder per benchmark task, in the order of --task")
    g.add_argument("--evaluation-batch-size", type=int, default=1)
    g.add_argument("--greedy", action="store_true",
                   help="generation tasks take the most likely token, as they do by default; "
                        "they sample only when --top-k, --top-p or --temperature is given "
                        "without --greedy")
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
    g.add_argument(launch.UNSAFE_FLAG, action="store_true",
                   help="where the OS offers no sandbox (user namespaces), run generated "
                        "HumanEval code anyway, with resource limits only: it can then read, "
                        "write and reach whatever this user can")


def parse_evaluation_args(argv: Optional[Sequence[str]] = None,
                          world_size: Optional[int] = None) -> argparse.Namespace:
    args = parse_inference_args(argv, add_evaluation_args, world_size)
    args.sample_replies = not args.greedy and _sampling_asked(argv)
    benchmarks = [t for t in args.task
                  if t not in DATASET_TASKS and not t.startswith(LM_EVAL_PREFIX)]
    if len(args.task_data_path) != len(benchmarks):
        raise ArgumentError(f"--task-data-path needs one folder per benchmark task "
                            f"({', '.join(benchmarks) or 'none'}), got {len(args.task_data_path)}")
    for task, dataset in DATASET_TASKS.items():
        if task in args.task and not args.data_path:
            raise ArgumentError(f"--task {task} needs --data-path PREFIX ({dataset})")
    if "rm_accuracy" in args.task and len(args.task) > 1:
        raise ArgumentError("--task rm_accuracy scores with a reward model: run it on its own, "
                            "the other tasks with a language model")
    if args.evaluation_batch_size < 1:
        raise ArgumentError(f"--evaluation-batch-size must be >= 1, got "
                            f"{args.evaluation_batch_size}")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise ArgumentError(f"--max-eval-samples must be >= 1, got {args.max_eval_samples}")
    if not (math.isfinite(args.human_eval_timeout) and args.human_eval_timeout > 0):
        raise ArgumentError(f"--human-eval-timeout must be a number of seconds > 0, got "
                            f"{args.human_eval_timeout}")
    _check_writable(args.eval_output)
    if "human_eval" in args.task and not args.unsafe_run_generated_code:
        problem = launch.isolation_problem()
        if problem is not None:
            raise ArgumentError(launch.refusal(problem))
    return args


def _sampling_asked(argv: Optional[Sequence[str]]) -> bool:
    """Whether a sampling flag was typed: ModelLink's evaluation answers greedily, so its
    sampling defaults alone must not turn sampling on."""
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for dest in _SAMPLING_DEFAULTS:
        probe.add_argument("--" + dest.replace("_", "-"), dest=dest, default=None)
    given, _ = probe.parse_known_args(argv)
    return any(value is not None for value in vars(given).values())


def _check_writable(path: str) -> None:
    """--eval-output is written after all the work: find out now that it can be, leaving an
    existing file untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ArgumentError(f"--eval-output {path} is a folder; give the path of a JSON file")
    if not os.path.isdir(folder):
        raise ArgumentError(f"--eval-output {path}: folder {folder} does not exist")
    problem = writable_dir_problem(folder)
    if problem is not None:
        raise ArgumentError(f"--eval-output {path}: {problem}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ArgumentError(f"--eval-output {path} is not writable")

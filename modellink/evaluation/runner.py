"""`evaluation.py`: load a checkpoint, score each --task, print tables and write JSON."""
from __future__ import annotations

import importlib.util
import sys
from typing import List, Optional, Sequence

import torch

from modellink.argument_errors import ArgumentError
from modellink.evaluation.arguments import DATASET_TASKS, LM_EVAL_PREFIX, parse_evaluation_args
from modellink.evaluation.benchmarks import load_questions
from modellink.evaluation.lm import ModelLinkLM
from modellink.evaluation.perplexity import perplexity
from modellink.evaluation.preference import preference_accuracy, read_pairs
from modellink.evaluation.results import TaskResult, write_results
from modellink.evaluation.rm_accuracy import TASK, check_reward_checkpoint, rm_accuracy
from modellink.evaluation.scoring import score
from modellink.inference.model import load_model


def _print(text: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(text, flush=True)


def run(argv: Optional[Sequence[str]] = None) -> List[TaskResult]:
    args = parse_evaluation_args(argv)
    harness = [t[len(LM_EVAL_PREFIX):] for t in args.task if t.startswith(LM_EVAL_PREFIX)]
    if harness and importlib.util.find_spec("lm_eval") is None:
        raise ArgumentError("--task lm_eval:... needs the lm-eval package (pip install lm-eval)")
    # Read every benchmark first: a folder in the wrong layout fails before the model loads.
    paths = iter(args.task_data_path)
    questions = {task: load_questions(task, next(paths), args.eval_language,
                                      args.instruction_template, args.max_eval_samples)
                 for task in args.task
                 if task not in DATASET_TASKS and not task.startswith(LM_EVAL_PREFIX)}
    pairs = read_pairs(args) if {"preference", TASK} & set(args.task) else []
    if TASK in args.task:
        check_reward_checkpoint(args.load)
        args.stage = "rm"  # the value head in place of the vocabulary output layer
    model = load_model(args)
    results: List[TaskResult] = []
    try:
        lm = ModelLinkLM(model, args)
        for task in args.task:
            if task == "ppl":
                results.append(perplexity(lm, args))
            elif task == "preference":
                results.append(preference_accuracy(model, pairs, args.evaluation_batch_size))
            elif task == TASK:
                results.append(rm_accuracy(model, pairs, args.evaluation_batch_size))
            elif task in questions:
                results.append(score(task, lm, questions[task], args.evaluation_batch_size,
                                     args.max_new_tokens, args.human_eval_timeout,
                                     args.unsafe_run_generated_code))
            else:
                continue
            _print(results[-1].table() + "\n")
        if harness:
            from modellink.evaluation.lm_eval_adapter import run_harness

            for result in run_harness(lm, harness, args.evaluation_batch_size,
                                      args.max_new_tokens, args.max_eval_samples):
                results.append(result)
                _print(result.table() + "\n")
        if torch.distributed.get_rank() == 0:
            write_results(results, args.eval_output)
            print(f"results written to {args.eval_output}", flush=True)
    finally:
        model.close()
        torch.distributed.destroy_process_group()
    return results


def main() -> int:
    from modellink.errors import run_cli

    return run_cli(lambda: run(sys.argv[1:]))

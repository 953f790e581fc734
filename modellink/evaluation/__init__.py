"""Benchmark evaluation (MMLU, C-Eval, GSM8K, BoolQ, BBH, AGIEval, HumanEval), perplexity on a
Megatron dataset, and an lm-evaluation-harness adapter. Scoring works with any model that has
`loglikelihood` and `generate` (see modellink.evaluation.scoring.EvalModel)."""
from modellink.evaluation.benchmarks import load_questions
from modellink.evaluation.results import TaskResult
from modellink.evaluation.scoring import EvalModel, score

__all__ = ["EvalModel", "TaskResult", "load_questions", "score"]

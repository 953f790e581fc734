"""Running untrusted generated code (HumanEval) in an OS sandbox: `launch` is the evaluator's
side, `jail` the launcher that builds the sandbox in a fresh interpreter."""
from modellink.evaluation.sandbox.launch import RunResult, isolation_problem, run_program

__all__ = ["RunResult", "isolation_problem", "run_program"]

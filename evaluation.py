"""Benchmark evaluation: `torchrun --nproc-per-node N evaluation.py <Megatron flags> --task mmlu
--task-data-path ./mmlu/data ...`."""
import sys

from modellink.evaluation.runner import main

if __name__ == "__main__":
    sys.exit(main())

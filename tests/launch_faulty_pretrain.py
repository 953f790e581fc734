"""tests/launch_pretrain.py with an injected data error: MODELLINK_TEST_FAIL="N:R[,R...]"
makes the second micro-batch of iteration N raise on global ranks R (a first run only: the
count starts at iteration 1)."""
import os
import sys

import torch

import launch_pretrain
from modellink.errors import run_cli
from modellink.training import loop


def inject_failure(spec: str) -> None:
    """From now on, `loop.forward_step` raises as MODELLINK_TEST_FAIL `spec` says."""
    iteration, ranks = spec.split(":")
    original_forward_step = loop.forward_step
    calls = [0]

    def failing_forward_step(data_iterator, model, *args, **kwargs):
        calls[0] += 1
        per_step = loop.get_num_microbatches()
        rank = torch.distributed.get_rank()
        if calls[0] == (int(iteration) - 1) * per_step + 2 and str(rank) in ranks.split(","):
            raise ValueError(f"injected data error on rank {rank}")
        return original_forward_step(data_iterator, model, *args, **kwargs)

    loop.forward_step = failing_forward_step


if __name__ == "__main__":
    inject_failure(os.environ["MODELLINK_TEST_FAIL"])
    sys.exit(run_cli(launch_pretrain.main))

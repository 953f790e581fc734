"""tests/launch_pretrain.py with an injected data error: MODELLINK_TEST_FAIL="N:R[,R...]"
makes the second micro-batch of iteration N raise on global ranks R (a first run only: the
count starts at iteration 1)."""
import os
import sys

import torch

import launch_pretrain
from modellink.errors import run_cli
from modellink.training import loop

_ITERATION, _RANKS = os.environ["MODELLINK_TEST_FAIL"].split(":")
_original_forward_step = loop.forward_step
_calls = [0]


def _failing_forward_step(data_iterator, model, *args, **kwargs):
    _calls[0] += 1
    per_step = loop.get_num_microbatches()
    rank = torch.distributed.get_rank()
    if _calls[0] == (int(_ITERATION) - 1) * per_step + 2 and str(rank) in _RANKS.split(","):
        raise ValueError(f"injected data error on rank {rank}")
    return _original_forward_step(data_iterator, model, *args, **kwargs)


loop.forward_step = _failing_forward_step

if __name__ == "__main__":
    sys.exit(run_cli(launch_pretrain.main))

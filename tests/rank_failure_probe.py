"""Run under torchrun with two ranks: rank 1 fails while rank 0 waits for it in an all-reduce.

PROBE_FAILURE says how rank 1 fails: "torch" (an error raised inside torch) or "user" (a
DataError). Like `pretrain`, each rank tears its process group down on the way out, which
is what breaks the survivor's collective before the failed rank reaches `run_cli`.
"""
import os
import sys

import torch

from modellink.errors import run_cli
from modellink.training.data.datasets import DataError


def main() -> None:
    torch.distributed.init_process_group("gloo")
    try:
        if torch.distributed.get_rank() == 1:
            if os.environ["PROBE_FAILURE"] == "user":
                raise DataError("--data-path probe: no such dataset")
            torch.zeros(-1)
        torch.distributed.all_reduce(torch.ones(2))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""Test harness run under torchrun: `pretrain()` and dump the loss history as JSON.

The last rank holds the loss (last pipeline stage); it writes MODELLINK_TEST_HISTORY.
"""
import json
import os
import sys
from typing import List, Optional

from modellink.errors import run_cli
from modellink.training.pretrain import pretrain


def main(argv: Optional[List[str]] = None, out: Optional[str] = None) -> None:
    """`argv` and `out` default to the command line and MODELLINK_TEST_HISTORY."""
    state = pretrain(sys.argv[1:] if argv is None else argv)
    out = out or os.environ.get("MODELLINK_TEST_HISTORY")
    if out and int(os.environ.get("RANK", "0")) == int(os.environ.get("WORLD_SIZE", "1")) - 1:
        with open(out, "w") as handle:
            json.dump({"loss": [r.loss for r in state.history],
                       "grad_norm": [r.grad_norm for r in state.history],
                       "metrics": [r.metrics for r in state.history],
                       "iteration": [r.iteration for r in state.history],
                       "validation": state.validation}, handle)


if __name__ == "__main__":
    sys.exit(run_cli(main))

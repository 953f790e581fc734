"""Run under torchrun: several `pretrain()` runs, one after the other, in the same processes.

MODELLINK_TEST_RUNS is a JSON list of runs {"args": [...], "history": PATH or null, "fail":
"N:R[,R...]" (optional, as MODELLINK_TEST_FAIL), "capture": PATH (optional: each step recorded
there, see tests/step_capture.py)}. A failing run ends the job, so it comes
last. Between runs the default process group stays up: one initialised again in the same
process would read its predecessor's rendezvous keys in torchrun's store.
"""
import contextlib
import json
import os
import sys

from megatron.core import parallel_state
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

import launch_pretrain
from launch_faulty_pretrain import inject_failure
from step_capture import capturing
from modellink.errors import run_cli
from modellink.training import pretrain


def _keep_process_group() -> None:
    destroy_num_microbatches_calculator()
    parallel_state.destroy_model_parallel()


def main() -> None:
    runs = json.loads(os.environ["MODELLINK_TEST_RUNS"])
    full_shutdown = pretrain.shutdown
    for index, run in enumerate(runs):
        pretrain.shutdown = full_shutdown if index == len(runs) - 1 else _keep_process_group
        if run.get("fail"):
            inject_failure(run["fail"])
        capture = capturing(run["capture"]) if run.get("capture") else contextlib.nullcontext()
        with capture:
            launch_pretrain.main(run["args"], run.get("history"))


if __name__ == "__main__":
    sys.exit(run_cli(main))

"""--use-deter-comp, checked by what it switches rather than by two CPU runs (which are
bit-identical with or without it): torch's deterministic algorithms, cuDNN without autotuning,
cuBLAS's fixed workspace and HCCL's fixed reduction order, all set by `initialize()` before the
communicator exists. What this cannot show on CPU: that NCCL/HCCL then reduce in a fixed order
(the environment they read is what is checked)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_LLAMA

PROBE = """
import json, os, sys, torch
from modellink.arguments import parse_args
from modellink.training.initialize import initialize, shutdown
initialize(parse_args(sys.argv[1:] + ["--train-iters", "1"]))
print(json.dumps({"algorithms": torch.are_deterministic_algorithms_enabled(),
                  "cudnn_deterministic": torch.backends.cudnn.deterministic,
                  "cudnn_benchmark": torch.backends.cudnn.benchmark,
                  "hccl": os.environ.get("HCCL_DETERMINISTIC"),
                  "cublas": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}))
shutdown()
"""


def switches(*flags: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "HCCL_DETERMINISTIC", "CUBLAS_WORKSPACE_CONFIG"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-c", PROBE, *TINY_LLAMA, *flags], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("deterministic", [False, True])
def test_use_deter_comp_switches_torch_and_collective_settings(deterministic):
    got = switches(*(["--use-deter-comp"] if deterministic else []))
    if deterministic:
        assert got == {"algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False,
                       "hccl": "true", "cublas": ":4096:8"}
    else:
        assert got["algorithms"] is False and got["cudnn_deterministic"] is False
        assert got["hccl"] is None and got["cublas"] is None

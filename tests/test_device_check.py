"""The device check (MODELLINK_DEVICE_CHECK): host tensors in collectives fail on CPU as on NCCL.

One torchrun job of two ranks runs every scenario in tests/device_check_probe.py. The rest of
the suite runs under the check too (tests/conftest.py sets it), so every pretraining,
fine-tuning, inference and evaluation path it drives is checked without launches of its own.
"""
import json
import os
import subprocess
import sys
from typing import Dict, Optional

import pytest

from conftest import ROOT, _free_port

REFUSED = ["old_log_setup_pattern", "derived_host_tensor", "copied_to_host",
           "host_all_gather_into_tensor", "host_point_to_point"]
ACCEPTED = ["device_tensors", "host_tensor_on_gloo_group", "object_collectives", "exit_monitor"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Optional[str]]:
    out = tmp_path_factory.mktemp("device_check") / "outcomes.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MODELLINK_CPU_THREADS="1",
               MODELLINK_DEVICE_CHECK="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "device_check_probe.py"), str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text())


def test_old_log_setup_pattern_fails_naming_the_call_site(outcomes: Dict[str, Optional[str]]
                                                          ) -> None:
    message = outcomes["old_log_setup_pattern"]
    assert message is not None, "a host tensor all-reduce on the default group passed"
    assert "allreduce on process group 0 (default_pg)" in message
    assert "host tensor (2,) torch.int64" in message
    assert "tests/device_check_probe.py:" in message and "in old_log_setup_pattern" in message


@pytest.mark.parametrize("scenario", REFUSED[1:])
def test_host_tensors_are_refused(outcomes: Dict[str, Optional[str]], scenario: str) -> None:
    assert outcomes[scenario] is not None, f"{scenario}: a host tensor reached a device group"
    assert f"in {scenario}" in outcomes[scenario]


@pytest.mark.parametrize("scenario", ACCEPTED)
def test_device_tensors_and_host_groups_are_accepted(outcomes: Dict[str, Optional[str]],
                                                     scenario: str) -> None:
    assert outcomes[scenario] is None, outcomes[scenario]


def test_suite_runs_under_the_check() -> None:
    assert os.environ.get("MODELLINK_DEVICE_CHECK") not in (None, "", "0")

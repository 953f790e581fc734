"""`bash tests/gpu/run.sh --self-test` works without a GPU: it imports the device tier, collects
every one of its test files, and prints the summary table with "no GPU" rows."""
import os
import subprocess
import sys

from conftest import ROOT

TIER_FILES = ("test_gpu_ops.py", "test_gpu_training.py", "test_gpu_inference.py",
              "test_gpu_ring.py")


def test_gpu_run_sh_self_test_prints_the_no_gpu_table():
    result = subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "run.sh"), "--self-test"],
                            env=dict(os.environ, PYTHON=sys.executable), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "device: no GPU" in result.stdout
    for name in TIER_FILES:
        row = rows[f"tier: {name}"]
        assert "no GPU" in row and int(row.split()[4]) > 0, row  # "<n> tests collected"
    for check in ("train_e2e 1b: transformers", "train_e2e 1b: modellink fused",
                  "generate medium"):
        assert "no GPU" in rows[check]

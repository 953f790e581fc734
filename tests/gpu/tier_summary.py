"""The body of `bash tests/gpu/run.sh`: the device tier's tests (tests/gpu, marker `gpu`), then
`bench/train_e2e.py --preset 1b` and `bench/generate.py` on the GPU, then one summary table.

Without a GPU, or with --self-test (what the CPU suite runs to keep this script working), the
tier's tests are only collected and every row says "no GPU". Each stage has a time limit so the
whole run stays inside 8 minutes on one H100/H200; the exit status is 1 when anything failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"tests": 270, "train": 140, "generate": 60}  # seconds per stage
TRAIN_VARIANTS = ["transformers", "modellink fused"]
Row = Tuple[str, str, str]  # check, result, detail


def _run(cmd: List[str], limit: int) -> Tuple[bool, float, str]:
    """(finished with status 0, seconds, the output)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        ok, output = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok, output = False, f"{exc.stdout or ''}\ntimed out after {limit} s"
    return ok, time.perf_counter() - start, output


def _last_line(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[-1] if lines else ""


def _pytest(*extra: str) -> List[str]:
    return [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-p", "no:cacheprovider",
            *extra]


def collected_rows() -> List[Row]:
    """Import the tier and collect its tests (no GPU: nothing runs)."""
    ok, _, output = _run(_pytest("--collect-only", "-q"), LIMITS["tests"])
    files = Counter(line.split("::")[0] for line in output.splitlines() if "::" in line)
    if not ok or not files:
        return [("tier: collection", "FAILED", _last_line(output))]
    return [(f"tier: {Path(name).name}", "no GPU", f"{count} tests collected, not run")
            for name, count in sorted(files.items())]


def test_rows(out: Path) -> List[Row]:
    report = out / "tier.xml"
    ok, seconds, output = _run(_pytest("-q", "-rfEs", f"--junitxml={report}"), LIMITS["tests"])
    if not report.exists():
        return [("tier", "FAILED", _last_line(output))]
    outcomes: Dict[str, Counter] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + ".py"
        kind = next((child.tag for child in case if child.tag in ("failure", "error",
                                                                     "skipped")), "passed")
        outcomes.setdefault(name, Counter())[kind] += 1
    rows = []
    for name, counts in sorted(outcomes.items()):
        bad = counts["failure"] + counts["error"]
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        rows.append((f"tier: {name}", "FAILED" if bad else "passed", detail))
    rows.append(("tier: total", "passed" if ok else "FAILED", f"{seconds:.0f} s"))
    return rows


def train_rows(out: Path) -> List[Row]:
    result = out / "train_e2e.json"
    ok, seconds, output = _run([sys.executable, "bench/train_e2e.py", "--preset", "1b",
                                "--iters", "8", "--warmup", "3", "--variants", *TRAIN_VARIANTS,
                                "--json", str(result)], LIMITS["train"])
    if not ok or not result.exists():
        return [("train_e2e 1b", "FAILED", _last_line(output))]
    rows = []
    for variant, row in json.loads(result.read_text())["rows"].items():
        mfu = f"MFU {row['mfu']:.1%}" if row["mfu"] is not None else "MFU n/a (unknown peak)"
        rows.append((f"train_e2e 1b: {variant}", f"{row['tokens_per_s']:.0f} tokens/s",
                     f"{mfu}, peak {row['peak_mb']:.0f} MB, "
                     f"{row['vs_transformers']:.2f}x transformers"))
    return rows


def generate_rows(out: Path) -> List[Row]:
    result = out / "generate.json"
    ok, _, output = _run([sys.executable, "bench/generate.py", "--device", "cuda", "--preset",
                          "medium", "--json", str(result)], LIMITS["generate"])
    if not ok or not result.exists():
        return [("generate medium", "FAILED", _last_line(output))]
    return [(f"generate medium batch {row['batch']}",
             f"{row['modellink_tokens_per_s']:.0f} tokens/s",
             f"transformers {row['transformers_tokens_per_s']:.0f} tokens/s, "
             f"{row['ratio']:.2f}x, same tokens: {row['same_tokens']}")
            for row in json.loads(result.read_text())["batches"]]


def print_table(device: str, rows: List[Row]) -> None:
    widths = [max(len(row[i]) for row in rows + [("check", "result", "detail")])
              for i in range(3)]
    print(f"\nmodellink GPU tier summary, {time.strftime('%Y-%m-%d')}, device: {device}")
    for row in [("check", "result", "detail"), tuple("-" * w for w in widths)] + rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-test", action="store_true",
                        help="collect the tier and print the table as without a GPU")
    cli = parser.parse_args()
    gpu = torch.cuda.is_available() and not cli.self_test
    if not gpu:
        rows = collected_rows() + [(f"train_e2e 1b: {variant}", "no GPU", "not run")
                                   for variant in TRAIN_VARIANTS]
        rows.append(("generate medium", "no GPU", "not run"))
        print_table("no GPU", rows)
        return int(any(row[1] == "FAILED" for row in rows))
    out = Path(tempfile.mkdtemp(prefix="gpu_tier_"))
    rows = test_rows(out) + train_rows(out) + generate_rows(out)
    print_table(torch.cuda.get_device_name(), rows)
    return int(any(row[1] == "FAILED" for row in rows))


if __name__ == "__main__":
    sys.exit(main())

"""Mutation testing: put each realistic one-line bug of mutants.py into a scratch copy of the
tree, run the narrow test selection that must catch it, put the line back; print which were
caught and the score. Too slow for CI (minutes per mutant on two cores), so pytest never
collects this folder (no test_*.py here); run it by hand:

    nice -n 19 .venv/bin/python tests/mutation/run_mutants.py [--only SUBSTRING] [--list]

The working tree itself is never touched: the tracked and untracked-but-not-ignored files are
copied to --scratch first (default /tmp/modellink-mutants), and the tests run there with the
scratch copy first on PYTHONPATH.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutants import MUTANTS, Mutant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def copy_tree(scratch: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    if scratch.exists():
        shutil.rmtree(scratch)
    for name in filter(None, (f.decode() for f in files)):
        source = ROOT / name
        if source.is_file():
            target = scratch / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def scratch_env(scratch: Path) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(scratch), PYTHONDONTWRITEBYTECODE="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def check_isolation(scratch: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import modellink; print(modellink.__file__)"],
                           cwd=scratch, env=scratch_env(scratch), capture_output=True, text=True,
                           check=True).stdout.strip()
    if not where.startswith(str(scratch)):
        raise SystemExit(f"the scratch copy imports modellink from {where}, not {scratch}")


def run_mutant(mutant: Mutant, scratch: Path, timeout: int) -> Dict[str, object]:
    path = scratch / mutant.file
    original = path.read_text()
    found = original.count(mutant.old)
    if found != 1:
        return {"outcome": "stale", "detail": f"old text found {found} times in {mutant.file}"}
    path.write_text(original.replace(mutant.old, mutant.new))
    start = time.time()
    try:
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                   *mutant.tests]
        result = subprocess.run(command, cwd=scratch, env=scratch_env(scratch),
                                capture_output=True, text=True, timeout=timeout)
        code, tail = result.returncode, (result.stdout + result.stderr)[-1500:]
    except subprocess.TimeoutExpired:
        code, tail = -1, f"timed out after {timeout} s"
    finally:
        path.write_text(original)
    outcome = {0: "survived", 1: "caught", -1: "caught (timeout)"}.get(code, f"error rc={code}")
    return {"outcome": outcome, "seconds": round(time.time() - start, 1), "detail": tail}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/modellink-mutants"))
    parser.add_argument("--only", default=None, help="run the mutants whose name contains this")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    parser.add_argument("--results", type=Path, default=None,
                        help="write every outcome here as JSON (default SCRATCH/results.json)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the outcomes already in the results file; run the others")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.only is None or args.only in m.name]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:40s} {mutant.group:28s} {mutant.file}")
        return 0
    results_file = args.results or args.scratch / "results.json"
    results = json.loads(results_file.read_text()) if args.resume and results_file.exists() else {}
    tree = args.scratch / "tree"
    copy_tree(tree)
    check_isolation(tree)
    for number, mutant in enumerate(mutants, start=1):
        if mutant.name in results:
            continue
        results[mutant.name] = dict(run_mutant(mutant, tree, args.timeout), group=mutant.group,
                                    why=mutant.why)
        print(f"[{number}/{len(mutants)}] {mutant.name}: {results[mutant.name]['outcome']} "
              f"({results[mutant.name].get('seconds', 0)} s)", flush=True)
        results_file.write_text(json.dumps(results, indent=1))
    results = {m.name: results[m.name] for m in mutants if m.name in results}
    caught = [n for n, r in results.items() if str(r["outcome"]).startswith("caught")]
    survived = [n for n, r in results.items() if r["outcome"] == "survived"]
    other = [n for n in results if n not in caught and n not in survived]
    scored = len(caught) + len(survived)
    print(f"\ncaught {len(caught)} of {scored} ({100 * len(caught) / max(scored, 1):.0f}%)")
    for name in survived:
        print(f"  survived: {name} ({results[name]['group']}): {results[name]['why']}")
    for name in other:
        print(f"  not run: {name}: {results[name]['outcome']}: {results[name]['detail'][-300:]}")
    return 0 if not survived and not other else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

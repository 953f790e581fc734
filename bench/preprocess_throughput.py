"""Throughput of `preprocess_data.py --workers N` against the tokenizer's own ceiling.

The ceiling is the raw batch-encode rate of the same tokenizer on the same documents, held in
memory, using every core (the Rust tokenizer's thread pool), with both the direct backend call
and `hf_tokenizer(batch)`; the ratio is taken against the faster. The pipeline is run as a
subprocess while its process tree's memory is sampled. Prints docs/s, MB/s, the ratio (processing
phase, and wall clock including interpreter start-up) and peak RSS of the main process and of all
processes together.

    python bench/preprocess_throughput.py --size-mb 64
    python bench/preprocess_throughput.py --size-mb 16 --hf-datasets   # both readers side by side
    python bench/preprocess_throughput.py --input big.jsonl --tokenizer-name-or-path TOKENIZER_DIR
"""

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modellink.data.demo import generate_demo  # noqa: E402
from modellink.data.tokenizers import add_tokenizer_arguments, build_tokenizer  # noqa: E402

BATCH = 1000


def write_corpus(path: str, size_mb: float, statements: List[str], seed: int = 0) -> None:
    """Documents of 5-40 demo statements (about 100 B to 1.5 KB) until the file is size_mb."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < size_mb * 2**20:
            text = "\n".join(rng.choice(statements) for _ in range(rng.randint(5, 40)))
            f.write(json.dumps({"text": text}) + "\n")


def ceiling(tokenizer, texts: List[str]) -> Tuple[float, float, float]:
    """Batch-encoding all texts: (wall seconds direct, CPU seconds direct, wall seconds via
    hf_tokenizer(batch))."""
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), BATCH):
        tokenizer.encode_batch(texts[i:i + BATCH])
    direct, direct_cpu = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    for i in range(0, len(texts), BATCH):
        tokenizer.hf_tokenizer(texts[i:i + BATCH])["input_ids"]
    return direct, direct_cpu, time.perf_counter() - start


def run_pipeline(input_path: str, tokenizer_dir: str, workers: int, out_dir: str, *extra: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "preprocess_data.py"), "--input", input_path,
           "--output-prefix", os.path.join(out_dir, "bench"), "--tokenizer-type", "PretrainedFromHF",
           "--tokenizer-name-or-path", tokenizer_dir, "--workers", str(workers), "--append-eod",
           "--overwrite", "--log-interval", "1000000000", *extra]
    start = time.perf_counter()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    root = psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        try:
            rss = [p.memory_info().rss for p in [root] + root.children(recursive=True)]
            peak_main, peak_tree = max(peak_main, rss[0]), max(peak_tree, sum(rss))
        except psutil.Error:
            pass
        time.sleep(0.2)  # sampling costs CPU the pipeline would otherwise use
    wall = time.perf_counter() - start
    # Includes the pool workers: each process's waited-for descendants roll up to its parent.
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    log = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"preprocess_data.py failed:\n{log[-3000:]}")
    match = re.search(r"Done in \S+: (\d+) records read, (\d+) documents written \(([\d.]+) docs/s", log)
    return {"wall": wall, "cpu": cpu, "docs": int(match.group(2)), "docs_per_s": float(match.group(3)),
            "peak_main": peak_main, "peak_tree": peak_tree}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=64, help="size of the generated jsonl corpus")
    parser.add_argument("--input", help="an existing jsonl file with a 'text' key (instead of generating)")
    parser.add_argument("--tokenizer-name-or-path", help="a local HF tokenizer (default: the demo tokenizer)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side; the best is reported")
    parser.add_argument("--hf-datasets", action="store_true",
                        help="also read the input through Hugging Face datasets (a fresh --cache-dir "
                             "each run, so building its cache is counted) and print its ratio beside")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        demo = generate_demo(os.path.join(tmp, "demo"), num_train=4000, seed=0)
        tokenizer_dir = args.tokenizer_name_or_path or demo["tokenizer"]
        input_path = args.input
        if input_path is None:
            statements = [s for line in open(demo["pretrain"]) for s in json.loads(line)["text"].split("\n")]
            input_path = os.path.join(tmp, "corpus.jsonl")
            write_corpus(input_path, args.size_mb, statements)
        size_mb = os.path.getsize(input_path) / 2**20

        tok_parser = argparse.ArgumentParser()
        add_tokenizer_arguments(tok_parser)
        tokenizer = build_tokenizer(tok_parser.parse_args(
            ["--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", tokenizer_dir]))
        texts = [json.loads(line)["text"] for line in open(input_path, encoding="utf-8")]
        n_docs = len(texts)
        # Alternate the two sides so that load from other processes hits both alike.
        tiny = os.path.join(tmp, "tiny.jsonl")
        with open(input_path, encoding="utf-8") as src, open(tiny, "w", encoding="utf-8") as dst:
            dst.write(src.readline())
        startup = run_pipeline(tiny, tokenizer_dir, args.workers, tmp)
        ceilings, runs, hf_runs = [], [], []
        for attempt in range(args.repeat):
            ceilings.append(ceiling(tokenizer, texts))
            runs.append(run_pipeline(input_path, tokenizer_dir, args.workers, tmp))
            if args.hf_datasets:
                cache = os.path.join(tmp, f"hf_cache{attempt}")
                hf_runs.append(run_pipeline(input_path, tokenizer_dir, args.workers, tmp, "--cache-dir", cache))
        del texts
        direct, direct_cpu, hf_call = min(ceilings)
        best = max(runs, key=lambda r: r["docs_per_s"])

    ceiling_rate = n_docs / min(direct, hf_call)
    print(f"input: {n_docs} documents, {size_mb:.1f} MB; {psutil.cpu_count()} cores")
    print(f"ceiling (batch encode, all cores): direct {n_docs / direct:.0f} docs/s ({size_mb / direct:.2f} MB/s), "
          f"hf_tokenizer(batch) {n_docs / hf_call:.0f} docs/s ({size_mb / hf_call:.2f} MB/s)")
    print(f"preprocess_data.py --workers {args.workers}: {best['docs_per_s']:.0f} docs/s processing, "
          f"{best['docs'] / best['wall']:.0f} docs/s wall clock ({best['wall']:.1f} s with start-up)")
    print(f"ratio: {best['docs_per_s'] / ceiling_rate:.2f} (processing), "
          f"{best['docs'] / best['wall'] / ceiling_rate:.2f} (wall clock)")
    if hf_runs:
        hf_best = max(hf_runs, key=lambda r: r["docs_per_s"])
        print(f"through Hugging Face datasets: {hf_best['docs_per_s']:.0f} docs/s processing, ratio "
              f"{hf_best['docs_per_s'] / ceiling_rate:.2f} (processing), "
              f"{hf_best['docs'] / hf_best['wall'] / ceiling_rate:.2f} (wall clock)")
    work_cpu = best["cpu"] - startup["cpu"]
    print(f"CPU time: ceiling {direct_cpu:.1f} s, preprocess_data.py {work_cpu:.1f} s beyond its "
          f"{startup['cpu']:.1f} s start-up (all processes); ratio {direct_cpu / work_cpu:.2f}")
    print(f"peak RSS: main process {best['peak_main'] / 2**20:.0f} MB, "
          f"all processes {best['peak_tree'] / 2**20:.0f} MB (workers share the parent's pages)")


if __name__ == "__main__":
    main()

"""Preprocessing streams: peak memory does not grow with the input.

A NullTokenizer keeps this fast; memory depends on reading, chunking and writing, which are
the same for every tokenizer (bench/preprocess_throughput.py measures a real one at scale).
"""

import os
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 2**20


def _write_corpus(path, size_bytes):
    # ~8 KB documents: the per-document index (Python lists in megatron's builder) stays small.
    line = '{"text": "' + " ".join(str(i % 1000) for i in range(2000)) + '"}\n'
    with open(path, "w") as f:
        f.write(line * (size_bytes // len(line) + 1))
    return os.path.getsize(path)


def _peak_rss(input_path, output_prefix, workers):
    cmd = [sys.executable, os.path.join(ROOT, "preprocess_data.py"), "--input", str(input_path),
           "--output-prefix", str(output_prefix), "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
           "--workers", str(workers), "--append-eod"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore"))
    main = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max([peak] + [p.memory_info().rss for p in [main] + main.children(recursive=True)])
        except psutil.Error:
            pass
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return peak


def test_peak_memory_does_not_grow_with_input(tmp_path):
    sizes = {name: _write_corpus(tmp_path / f"{name}.jsonl", size) for name, size in
             (("tiny", 64 * 1024), ("medium", 8 * MB), ("large", 32 * MB))}
    peaks = {name: _peak_rss(tmp_path / f"{name}.jsonl", tmp_path / name, workers=2) for name in sizes}
    print({name: f"{peak / MB:.0f} MB" for name, peak in peaks.items()})
    # Four times the input, (almost) the same peak: the per-document index is all that grows.
    assert peaks["large"] - peaks["medium"] < (sizes["large"] - sizes["medium"]) / 8
    # And what the chunks in flight cost is well below the input size.
    assert peaks["large"] - peaks["tiny"] < sizes["large"] / 2

"""End-to-end training of a Llama-style model: modellink's `pretrain_gpt` loop (all fused-operator
flags, and for comparison with none, and with full recompute) against a plain Hugging Face
transformers loop (SDPA attention) on the same model, batch, sequence length and optimizer.

Each variant trains in its own process, one after the other in this run, so peak memory is its
own: torch.cuda.max_memory_allocated on a GPU, the growth of peak RSS over the pre-model baseline
on the CPU. Prints tokens/s, achieved TFLOP/s, MFU (model FLOPs by Megatron-LM's formula over the
device's dense bf16 peak: 989 TFLOP/s for an H100 or H200) and each variant's speed relative to
transformers, all from each variant's best timed iteration (on a shared machine other processes
only add time; the median is printed too).

    python bench/train_e2e.py                  # CPU: tiny model, fp32
    python bench/train_e2e.py --preset 1b      # GPU: hidden 2048, 16 layers, 16 heads, GQA 8,
                                               # seq 4096, bf16
    python bench/train_e2e.py --json OUT.json  # also write the table (tests/gpu/run.sh reads it)
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Dict, List

import torch

from llama_flags import llama_architecture_flags

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

PRESETS = {
    "tiny": dict(hidden=256, layers=4, heads=8, groups=4, ffn=704, seq=256, micro=2, batch=4,
                 vocab=2048, bf16=False),
    "1b": dict(hidden=2048, layers=16, heads=16, groups=8, ffn=5632, seq=4096, micro=2,
               batch=8, vocab=32000, bf16=True),
}
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}  # dense bf16, by a word of the device's name
FUSED = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
         "--use-fused-rotary-pos-emb"]
VARIANTS = {
    "transformers": None,
    "modellink fused": FUSED,
    "modellink reference": [],
    "modellink fused + full recompute": FUSED + [
        "--recompute-granularity", "full", "--recompute-method", "uniform",
        "--recompute-num-layers", "1"],
}
RESULT = "RESULT "


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _flops(cfg: dict) -> float:
    from modellink.training.monitoring.metrics import flops_per_iteration

    return flops_per_iteration(SimpleNamespace(
        num_attention_heads=cfg["heads"], num_layers=cfg["layers"], hidden_size=cfg["hidden"],
        kv_channels=None, num_experts=None, ffn_hidden_size=cfg["ffn"], swiglu=True,
        global_batch_size=cfg["batch"], seq_length=cfg["seq"], num_query_groups=cfg["groups"],
        padded_vocab_size=cfg["vocab"]))


def _modellink(cfg: dict, flags: List[str], iters: int, device: str) -> Dict[str, object]:
    from modellink.training.pretrain import pretrain

    argv = llama_architecture_flags(cfg) + [
        "--attention-dropout", "0", "--hidden-dropout", "0", "--mock-data",
        "--vocab-size", str(cfg["vocab"] - 1), "--padded-vocab-size", str(cfg["vocab"]),
        "--micro-batch-size", str(cfg["micro"]), "--global-batch-size", str(cfg["batch"]),
        "--train-iters", str(iters), "--lr", "1e-4", "--lr-decay-style", "constant",
        "--weight-decay", "0.0", "--clip-grad", "0", "--log-interval", str(iters),
        "--eval-iters", "0", "--device", device,
    ] + (["--bf16"] if cfg["bf16"] else []) + flags
    history = pretrain(argv).history
    return {"seconds": [r.seconds for r in history], "loss": [r.loss for r in history]}


def _transformers(cfg: dict, iters: int, device: str) -> Dict[str, object]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["ffn"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["groups"], max_position_embeddings=cfg["seq"],
        tie_word_embeddings=False, attn_implementation="sdpa")
    dtype = torch.bfloat16 if cfg["bf16"] else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    steps = cfg["batch"] // cfg["micro"]
    tokens = torch.randint(0, cfg["vocab"], (steps, cfg["micro"], cfg["seq"]), device=device)
    seconds, losses = [], []
    for _ in range(iters):
        start = time.perf_counter()
        total = 0.0
        for micro in tokens:  # gradient accumulation: the same global batch as modellink's
            loss = model(input_ids=micro, labels=micro).loss / steps
            loss.backward()
            total += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(total)
    return {"seconds": seconds, "loss": losses}


def worker(name: str, cfg: dict, iters: int, device: str) -> None:
    if name != "transformers":
        import modellink.training.pretrain  # noqa: F401  (imports count in the baseline)
    baseline = _rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    flags = VARIANTS[name]
    run = (_transformers(cfg, iters, device) if flags is None
           else _modellink(cfg, flags, iters, device))
    run["peak_bytes"] = (torch.cuda.max_memory_allocated() if device == "cuda"
                         else _peak_rss_bytes() - baseline)
    print(RESULT + json.dumps(run), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="default: 1b on a GPU, tiny on the CPU")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants this many times in turn; each keeps its best")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads for every variant (torch and modellink alike)")
    parser.add_argument("--json", help="also write the table's rows to this file")
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(cli.threads)
    preset = cli.preset or ("1b" if device == "cuda" else "tiny")
    cfg = PRESETS[preset]
    if cli.worker:
        worker(cli.worker, cfg, cli.iters, device)
        return
    tokens, flops = cfg["batch"] * cfg["seq"], _flops(cfg)
    name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{os.cpu_count()}"
    print(f"{preset} model {cfg}, device {name}, threads {cli.threads}, {cli.iters} iterations "
          f"(first {cli.warmup} not timed), {flops / 1e12:.3f} model TFLOP per iteration")
    print(f"{'variant':34s} {'best ms':>8s} {'median':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'peak MB':>8s} {'vs transformers':>15s}  final loss")
    results: Dict[str, dict] = {}
    for variant in cli.variants * cli.rounds:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant,
               "--preset", preset, "--iters", str(cli.iters), "--threads", str(cli.threads)]
        # modellink's CPU backend sets its own thread count unless told this one.
        env = dict(os.environ, PYTHONWARNINGS="ignore", MODELLINK_CPU_THREADS=str(cli.threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
        if proc.returncode != 0 or not lines:
            print(f"{variant:34s} failed: {proc.stderr.strip().splitlines()[-1:]}")
            continue
        run = json.loads(lines[-1][len(RESULT):])
        run["timed"] = run["seconds"][cli.warmup:] + results.get(variant, {}).get("timed", [])
        results[variant] = run
    reference = results.get("transformers")
    peak = next((value for word, value in PEAK_FLOPS.items() if word in name), None)
    rows = {}
    for variant, run in results.items():
        timed = run["timed"]
        seconds = min(timed)
        row = rows[variant] = dict(
            tokens_per_s=tokens / seconds, tflops=flops / seconds / 1e12,
            mfu=flops / seconds / peak if peak else None, peak_mb=run["peak_bytes"] / 2**20,
            vs_transformers=min(reference["timed"]) / seconds if reference else None)
        mfu = f"{row['mfu']:6.1%}" if peak else "   n/a"
        ratio = (f"{row['vs_transformers']:14.2f}x" if reference else f"{'':>15s}")
        print(f"{variant:34s} {seconds * 1e3:8.1f} {statistics.median(timed) * 1e3:8.1f} "
              f"{tokens / seconds:9.1f} {flops / seconds / 1e12:8.3f} {mfu} "
              f"{row['peak_mb']:8.1f} {ratio}  {run['loss'][-1]:.4f}")
    if cli.json:
        with open(cli.json, "w") as handle:
            json.dump({"device": name, "preset": preset, "rows": rows}, handle)


if __name__ == "__main__":
    main()

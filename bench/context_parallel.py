"""Context parallelism: per-rank activation memory and step time against the sequence length.

For each sequence length and CP size (1, 2, 4) it starts CP processes, builds the tiny model
the training run would build (layer spec, ContextParallelAttention, the train step's batch
slicing) and times forward + backward of one micro-batch (no optimizer, no gradient
all-reduce). Activation memory per rank is measured as:
- cpu: the bytes autograd saves for backward during the forward (saved_tensors_hooks, each
  storage once, weights left out), i.e. what the step holds at its peak besides weights,
  gradients and transient buffers;
- cuda/npu: max_memory_allocated during forward + backward minus the allocation before it.
Ratios are against CP=1 at the same length; memory should fall as 1/CP.

    python bench/context_parallel.py                          # CPU: 4K/8K/16K, CP 1/2/4
    python bench/context_parallel.py --device cuda --hidden 1024 --layers 4
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from typing import Dict, List, Tuple

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _model_argv(opts: argparse.Namespace, cp: int, algo: str) -> List[str]:
    longest = max(opts.seqs)
    argv = [
        "--num-layers", str(opts.layers), "--hidden-size", str(opts.hidden),
        "--num-attention-heads", str(opts.heads), "--seq-length", str(longest),
        "--max-position-embeddings", str(longest), "--normalization", "RMSNorm", "--swiglu",
        "--position-embedding-type", "rope", "--disable-bias-linear",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--use-flash-attn",
        "--mock-data", "--vocab-size", "1000", "--padded-vocab-size", "1024",
        "--micro-batch-size", "1", "--train-iters", "1", "--lr", "1e-4",
        "--device", opts.device, "--context-parallel-size", str(cp),
    ]
    if cp > 1:  # CP=1 runs the same attention path without the algorithm
        argv += ["--context-parallel-algo", algo]
    if algo == "hybrid_cp_algo":
        argv += ["--ulysses-degree-in-cp", "2"]
    return argv + (["--bf16"] if opts.bf16 else [])


class _SavedBytes:
    """Bytes of the distinct storages autograd saves for backward while active, weights
    left out (they are saved by reference and held anyway)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: Dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weights:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def _step(model: torch.nn.Module, batch: Dict[str, torch.Tensor], device: str
          ) -> Tuple[float, int]:
    from modellink.training.data.context_parallel_batch import context_parallel_share

    local = context_parallel_share(batch)
    saved = _SavedBytes(model)
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        loss = model(local["tokens"], local["position_ids"], None, labels=local["labels"])
    loss.float().sum().backward()
    if device != "cpu":
        torch.cuda.synchronize()
        memory = torch.cuda.max_memory_allocated() - before
    else:
        memory = saved.total
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, memory


def _worker(rank: int, cp: int, port: int, opts: argparse.Namespace, algo: str,
            results: "mp.Queue") -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(cp),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from modellink.arguments import parse_args
    from modellink.models.gpt import build_model_chunks, transformer_config_from_args
    from modellink.training.initialize import initialize, shutdown

    args = parse_args(_model_argv(opts, cp, algo), world_size=cp)
    backend = initialize(args)
    try:
        model = build_model_chunks(args, transformer_config_from_args(args, backend.device))[0]
        if backend.device != "cpu":
            model = model.cuda()
        for seq in opts.seqs:
            tokens = torch.randint(0, 1000, (1, seq), generator=torch.Generator().manual_seed(0))
            batch = {"tokens": tokens, "labels": tokens.roll(-1, dims=1),
                     "position_ids": torch.arange(seq).unsqueeze(0)}
            batch = {key: value.cuda() for key, value in batch.items()}
            runs = [_step(model, batch, backend.device) for _ in range(opts.steps + 1)]
            seconds = statistics.median(run[0] for run in runs[1:])  # the first one warms up
            if rank == 0:
                results.put((seq, seconds, max(run[1] for run in runs)))
    finally:
        shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _measure(opts: argparse.Namespace, cp: int, algo: str) -> Dict[int, Tuple[float, int]]:
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_worker, args=(cp, _free_port(), opts, algo, results), nprocs=cp,
                       start_method="spawn")
    measured = {}
    while not results.empty():
        seq, seconds, memory = results.get()
        measured[seq] = (seconds, memory)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    parser.add_argument("--seqs", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--algos", nargs="+", default=["ulysses_cp_algo", "megatron_cp_algo"],
                        choices=["ulysses_cp_algo", "megatron_cp_algo", "hybrid_cp_algo"])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="timed steps after one warm-up")
    parser.add_argument("--bf16", action="store_true")
    opts = parser.parse_args()
    memory_kind = "saved-for-backward bytes" if opts.device == "cpu" else "peak allocated"
    print(f"context parallelism, {opts.layers} layer(s), hidden {opts.hidden}, {opts.heads} "
          f"heads, micro-batch 1, {opts.device}; memory = per-rank {memory_kind}")
    rows = {(seq, 1, "-"): value for seq, value in _measure(opts, 1, "-").items()}
    for algo in opts.algos:
        for cp in (c for c in opts.cps if c > 1 and (algo != "hybrid_cp_algo" or c >= 4)):
            rows.update({(seq, cp, algo): value for seq, value in _measure(opts, cp, algo).items()})
    print(f"{'seq':>6} {'CP':>3} {'algorithm':<17} {'memory MiB':>11} {'x CP=1':>7} "
          f"{'step ms':>9} {'x CP=1':>7}")
    for (seq, cp, algo), (seconds, memory) in sorted(rows.items()):
        base_seconds, base_memory = rows[(seq, 1, "-")]
        print(f"{seq:>6} {cp:>3} {algo:<17} {memory / 2**20:>11.1f} "
              f"{memory / base_memory:>7.3f} {seconds * 1e3:>9.0f} "
              f"{seconds / base_seconds:>7.3f}")

if __name__ == "__main__":
    main()

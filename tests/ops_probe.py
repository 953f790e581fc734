"""Checks of the fused-operator layer that need their own processes (run under torchrun).

    recompute OUT ARGS...   one forward/backward of the model built from ARGS under each recompute
                            setting; writes loss, grad norm and bytes kept for backward to OUT
    mc2 OUT [DEVICE]        2 ranks: the MC2 linears against single-device math, through the
                            stand-in torch_npu (cpu over gloo, cuda over NCCL) or the real one
                            (npu over HCCL); writes the largest errors to OUT
"""
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch

ROOT = Path(__file__).resolve().parent.parent
RECOMPUTE = {
    "none": [],
    "full": ["--recompute-granularity", "full", "--recompute-method", "uniform",
             "--recompute-num-layers", "1"],
    "selective": ["--recompute-granularity", "selective", "--recompute-modules", "core_attn",
                  "mlp"],
    "activation": ["--recompute-activation-function"],
}


def run_probe(argv: List[str], nproc: int) -> subprocess.CompletedProcess:
    """Run this script under torchrun with `nproc` CPU ranks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Kept after ROOT: a GPU machine's wheels may come on PYTHONPATH (tests/gpu/run.sh).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
               "PYTHONPATH")])), OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={port}", str(Path(__file__).resolve()), *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _saved_bytes_and_grads(model: torch.nn.Module, tokens: torch.Tensor) -> Dict[str, float]:
    """Activation bytes autograd keeps between forward and backward (each storage once, weights
    excluded), then backward."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: Dict[int, torch.UntypedStorage] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage()
        return t

    position_ids = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens, position_ids, None, labels=tokens).float().mean()
    # Sized after the forward: activation recompute frees storages it has handed over.
    saved = sum(storage.nbytes() for storage in storages.values())
    loss.backward()
    grad_norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.parameters()))
    return {"loss": loss.item(), "grad_norm": grad_norm.item(), "saved_bytes": saved}


def recompute(out: str, argv: List[str]) -> None:
    from modellink.arguments import parse_args
    from modellink.models.gpt import build_model_chunks, transformer_config_from_args
    from modellink.models.init import init_layout_independent
    from modellink.training.initialize import initialize, shutdown

    results = {}
    backend = initialize(parse_args(argv))
    try:
        for name, extra in RECOMPUTE.items():
            args = parse_args(argv + extra)
            args.device = backend.device
            config = transformer_config_from_args(args, backend.device)
            (model,) = build_model_chunks(args, config)
            init_layout_independent([model], config, args.seed)
            torch.manual_seed(0)
            tokens = torch.randint(0, 100, (args.micro_batch_size, args.seq_length))
            results[name] = _saved_bytes_and_grads(model, tokens)
    finally:
        shutdown()
    Path(out).write_text(json.dumps(results))


def _stand_in_npu() -> object:
    spec = importlib.util.spec_from_file_location(
        "torch_npu", ROOT / "tests" / "npu_stub" / "torch_npu" / "__init__.py")
    stub = importlib.util.module_from_spec(spec)
    sys.modules["torch_npu"] = stub
    spec.loader.exec_module(stub)
    return stub


def mc2(out: str, device: str = "cpu") -> None:
    import torch.distributed as dist

    from modellink.ops import mc2 as ops_mc2

    if device != "cpu":
        getattr(torch, device).set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group({"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[device])
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    stub = None
    if device != "npu":
        stub = _stand_in_npu()
        stub.register_group("tp", group)
        # The HCCL handle lookup needs a real HCCL group; the stand-in addresses it by name.
        ops_mc2.hccl_comm_name = lambda _group: "tp"
    seq, batch, hidden, out_features = 8, 2, 256, 512
    shard = seq // world
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(seq, batch, hidden, generator=gen)
    w_col = [torch.randn(out_features, hidden, generator=gen) / 16 for _ in range(world)]
    g_col = [torch.randn(seq, batch, out_features, generator=gen) for _ in range(world)]
    x_row = [torch.randn(seq, batch, out_features, generator=gen) for _ in range(world)]
    w_row = [torch.randn(hidden, out_features, generator=gen) / 16 for _ in range(world)]
    g_row = torch.randn(seq, batch, hidden, generator=gen)
    rows = slice(rank * shard, (rank + 1) * shard)
    errors = {}

    def check(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        errors[name] = (got.float().cpu() - want).abs().max().item() / want.abs().max().item()

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=torch.bfloat16).requires_grad_()

    # Column-parallel: sequence shard in, full-sequence partial features out.
    inp, weight = leaf(x[rows]), leaf(w_col[rank])
    output = ops_mc2._AllGatherMatmul.apply(inp, weight, group)
    output.backward(g_col[rank].to(device=device, dtype=torch.bfloat16))
    check("column output", output, x @ w_col[rank].t())
    check("column grad input", inp.grad, sum(g @ w for g, w in zip(g_col, w_col))[rows])
    check("column grad weight", weight.grad,
          g_col[rank].reshape(-1, out_features).t() @ x.reshape(-1, hidden))
    # Row-parallel: partial features in, summed sequence shard out.
    inp, weight = leaf(x_row[rank]), leaf(w_row[rank])
    output = ops_mc2._MatmulReduceScatter.apply(inp, weight, group)
    output.backward(g_row[rows].to(device=device, dtype=torch.bfloat16))
    check("row output", output, sum(a @ w.t() for a, w in zip(x_row, w_row))[rows])
    check("row grad input", inp.grad, g_row @ w_row[rank])
    check("row grad weight", weight.grad,
          g_row.reshape(-1, hidden).t() @ x_row[rank].reshape(-1, out_features))
    if stub is not None:
        errors["kernels"] = sorted({name for name, _ in stub.calls})
    if rank == 0:
        Path(out).write_text(json.dumps(errors))
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, out_path = sys.argv[1], sys.argv[2]
    if mode == "recompute":
        recompute(out_path, sys.argv[3:])
    else:
        mc2(out_path, *sys.argv[3:4])

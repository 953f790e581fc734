"""Shared helpers: launch `pretrain_gpt`-equivalent runs on CPU ranks over gloo."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Every test and torchrun child inherits the device check (modellink/backend/device_check.py):
# a collective on a host tensor fails here as NCCL/HCCL would fail it on the first GPU run.
os.environ.setdefault("MODELLINK_DEVICE_CHECK", "1")

# A tiny Llama-style model: RMSNorm, SwiGLU, RoPE, GQA, untied embeddings, no dropout.
TINY_LLAMA = [
    "--num-layers", "4", "--hidden-size", "64", "--ffn-hidden-size", "128",
    "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
    "--seq-length", "32", "--max-position-embeddings", "32",
    "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
    "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    "--attention-dropout", "0", "--hidden-dropout", "0",
    "--mock-data", "--vocab-size", "100", "--padded-vocab-size", "128",
    "--micro-batch-size", "2", "--global-batch-size", "8",
    "--lr", "1e-3", "--lr-decay-style", "constant", "--clip-grad", "1.0",
    "--seed", "1234", "--use-cpu-initialization", "--device", "cpu",
    "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "0",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(args: List[str], nproc: int, history: Optional[Path] = None,
              env: Optional[Dict[str, str]] = None, timeout: int = 600
              ) -> subprocess.CompletedProcess:
    """Run tests/launch_pretrain.py under torchrun with `nproc` CPU ranks."""
    # Kept after ROOT: a GPU machine's wheels may come on PYTHONPATH (tests/gpu/run.sh).
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
                    "PYTHONPATH")])), OMP_NUM_THREADS="1",
                    MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    if history is not None:
        full_env["MODELLINK_TEST_HISTORY"] = str(history)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "launch_pretrain.py"), *args]
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_example(script: str, stdin: Optional[str] = None, **variables: str
                ) -> subprocess.CompletedProcess:
    """`bash examples/<script>` on CPU ranks over gloo, with the venv's torchrun first on PATH
    and a free port; `variables` set the script's own (GPUS_PER_NODE, TP, MODEL_ARGS, ...)."""
    env = dict(os.environ, MASTER_PORT=str(_free_port()), DISTRIBUTED_BACKEND="gloo",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}", **variables)
    return subprocess.run(["bash", str(ROOT / "examples" / script)], env=env, input=stdin,
                          capture_output=True, text=True, timeout=600)


def run_in_one_job(runs: list, nproc: int) -> subprocess.CompletedProcess:
    """tests/launch_pretrain_runs.py under torchrun: `runs` (pretrain() argument lists and
    what to do around each) one after the other in one job, to share its start-up."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "launch_pretrain_runs.py")]
    return subprocess.run(cmd, env=_runs_env(runs), capture_output=True, text=True, timeout=600)


def _runs_env(runs: list) -> dict:
    return dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
                MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore",
                MODELLINK_TEST_RUNS=json.dumps(runs))


def run_optimizer_probe(runs: list, out: Path) -> Any:
    """tests/optimizer_probe.py on one process without a launcher: `runs` one after the other,
    the optimizer's records of each written to `out` and returned."""
    env = _runs_env(runs)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "optimizer_probe.py"),
                             str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    import torch  # here, not at the top: conftest is read before every test, torch or not

    return torch.load(out, weights_only=False)


def train_history(tmp_path: Path, args: List[str], nproc: int, name: str = "history") -> dict:
    out = tmp_path / f"{name}.json"
    result = run_ranks(args, nproc, history=out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture
def tiny_llama() -> List[str]:
    return list(TINY_LLAMA)


@pytest.fixture
def one_rank(tmp_path):
    """One CPU gloo process with megatron-core's model-parallel state, for tests that build
    modules in-process."""
    import torch
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker
    from modellink import backend

    backend.activate(backend.resolve("cpu"))
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                                         rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    yield
    clear_aux_losses_tracker()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()

"""Context parallelism's core attention (modellink/ops/context_parallel.py and
ulysses_attention.py) against unsharded attention on the gathered tensors.

The multi-rank checks run this file under torchrun over gloo (one 2-rank job for every CP=2
case, one 4-rank job for hybrid 2x2): each rank takes its load-balanced rows of the same random
Q/K/V, runs ContextParallelAttention forward and backward, and compares output and input
gradients with FlashSelfAttention on the whole sequence.
"""
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from modellink.argument_errors import ArgumentError
from modellink.ops.context_parallel import (
    ContextParallelSettings,
    local_positions,
    slice_for_rank,
)
from modellink.ops.ulysses_attention import kv_repeat_factor

ROOT = Path(__file__).resolve().parent.parent
SEQ, BATCH, DIM = 32, 2, 8
TOLERANCE = 1e-5  # fp32, relative to the largest reference value


@dataclass(frozen=True)
class Case:
    algo: str
    heads: int = 4
    groups: int = 4
    window: Optional[int] = None
    packed: bool = False  # a segment mask: samples packed into one row
    path: str = "reference"
    kv_head_repeat: bool = False
    overlap: bool = False  # --use-cp-send-recv-overlap
    alibi: bool = False
    softcap: Optional[float] = None


CASES: Dict[int, Dict[str, Case]] = {
    2: {
        "ulysses causal": Case("ulysses_cp_algo"),
        "ulysses window": Case("ulysses_cp_algo", window=5),
        "ulysses packed sdpa": Case("ulysses_cp_algo", groups=2, packed=True, path="sdpa"),
        "ulysses gqa": Case("ulysses_cp_algo", groups=2),
        "ulysses kv repeat": Case("ulysses_cp_algo", groups=1, kv_head_repeat=True),
        # Three groups: a wrong copy order would hand query heads another group's K/V.
        "ulysses kv repeat 3 groups": Case("ulysses_cp_algo", heads=6, groups=3,
                                           kv_head_repeat=True),
        "ulysses alibi softcap": Case("ulysses_cp_algo", alibi=True, softcap=2.0),
        "ring gqa packed window": Case("megatron_cp_algo", groups=2, packed=True, window=5),
        "ring overlap": Case("megatron_cp_algo", groups=2, overlap=True),
    },
    4: {
        "hybrid gqa packed": Case("hybrid_cp_algo", groups=2, packed=True),
        "hybrid kv repeat window": Case("hybrid_cp_algo", groups=1, kv_head_repeat=True,
                                        window=3, overlap=True),
    },
}
REFUSALS = {
    "ulysses groups 1": (Case("ulysses_cp_algo", groups=1), 0.0),
    "ring dropout": (Case("megatron_cp_algo"), 0.1),
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_ranks(nproc: int, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
               "PYTHONPATH")])), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", __file__, str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(out.read_text())


def test_local_positions_are_chunks_r_and_mirror() -> None:
    assert local_positions(4, 0, 2, "cpu").tolist() == [0, 1, 6, 7]
    assert local_positions(4, 1, 2, "cpu").tolist() == [2, 3, 4, 5]
    sequence = torch.arange(24)
    for rank in range(3):
        assert torch.equal(slice_for_rank(sequence, 0, rank, 3), local_positions(8, rank, 3, "cpu"))
    union = torch.cat([local_positions(8, rank, 3, "cpu") for rank in range(3)])
    assert sorted(union.tolist()) == list(range(24))


def test_slice_for_rank_takes_the_chunks_along_dim() -> None:
    tokens = torch.arange(16).view(2, 8)
    assert slice_for_rank(tokens, 1, 1, 2).tolist() == [[2, 3, 4, 5], [10, 11, 12, 13]]


def test_sequence_not_in_2cp_chunks_is_refused() -> None:
    with pytest.raises(ArgumentError, match="--context-parallel-size 4: the sequence length 12"):
        slice_for_rank(torch.zeros(2, 12), 1, 0, 4)
    with pytest.raises(ArgumentError, match="--context-parallel-size"):
        local_positions(5, 0, 2, "cpu")


def test_kv_repeat_factor() -> None:
    assert kv_repeat_factor(4, 2, 2, False) == 1
    assert kv_repeat_factor(4, 1, 2, True) == 2
    assert kv_repeat_factor(8, 2, 8, True) == 4
    assert kv_repeat_factor(12, 3, 2, True) == 2
    with pytest.raises(ArgumentError, match="--kv-head-repeat-before-uly-alltoall"):
        kv_repeat_factor(4, 1, 2, False)
    with pytest.raises(ArgumentError, match="--ulysses-degree-in-cp .* 4 does not divide the 6 "
                                            "attention heads"):
        kv_repeat_factor(6, 6, 4, True)


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ArgumentError, match="--context-parallel-algo 'ring'"):
        ContextParallelSettings(algo="ring")


def test_ulysses_two_ranks_match_unsharded(tmp_path: Path) -> None:
    result = _run_ranks(2, tmp_path / "cp2.json")
    assert set(result["errors"]) == set(CASES[2])
    for name, error in result["errors"].items():
        assert error < TOLERANCE, (name, error)
    assert "--kv-head-repeat-before-uly-alltoall" in result["refused"]["ulysses groups 1"]
    assert "--attention-dropout" in result["refused"]["ring dropout"]


def test_hybrid_two_by_two_matches_unsharded(tmp_path: Path) -> None:
    result = _run_ranks(4, tmp_path / "cp4.json")
    assert set(result["errors"]) == set(CASES[4])
    for name, error in result["errors"].items():
        assert error < TOLERANCE, (name, error)


# ---- the torchrun worker ----

def _layer(case: Case, cp: Optional[ContextParallelSettings], dropout: float = 0.0
           ) -> torch.nn.Module:
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from modellink.ops.attention import AttentionSettings, FlashSelfAttention
    from modellink.ops.context_parallel import ContextParallelAttention

    config = TransformerConfig(
        num_layers=1, hidden_size=case.heads * DIM, num_attention_heads=case.heads,
        num_query_groups=case.groups, kv_channels=DIM, attention_dropout=dropout,
        window_size=None if case.window is None else (case.window, 0))
    settings = AttentionSettings(path=case.path, softcap=case.softcap, alibi=case.alibi)
    if cp is None:
        return FlashSelfAttention(config, 1, AttnMaskType.causal, "self", settings=settings)
    return ContextParallelAttention(config, 1, AttnMaskType.causal, "self", settings=settings,
                                    cp=cp)


def _inputs(case: Case) -> tuple:
    gen = torch.Generator().manual_seed(7)
    query = torch.randn(SEQ, BATCH, case.heads, DIM, generator=gen)
    key, value = (torch.randn(SEQ, BATCH, case.groups, DIM, generator=gen) for _ in range(2))
    grad = torch.randn(SEQ, BATCH, case.heads * DIM, generator=gen)
    mask = None
    if case.packed:
        # Each row packs samples that end at random places; megatron-core's mask, True = hidden.
        ends = torch.rand(BATCH, SEQ, generator=gen) < 0.15
        segments = torch.cumsum(ends.long(), dim=1)
        causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
        mask = ((segments[:, :, None] != segments[:, None, :]) | ~causal).unsqueeze(1)
    return query, key, value, grad, mask


def _max_error(case: Case, rank: int, size: int, cp: ContextParallelSettings) -> float:
    query, key, value, grad, mask = _inputs(case)
    full = [t.clone().requires_grad_() for t in (query, key, value)]
    want = _layer(case, None)(*full, mask)
    want.backward(grad)
    local = [slice_for_rank(t, 0, rank, size).requires_grad_() for t in (query, key, value)]
    got = _layer(case, cp)(*local, mask)
    got.backward(slice_for_rank(grad, 0, rank, size))
    pairs = [(got, want)] + [(mine.grad, whole.grad) for mine, whole in zip(local, full)]
    return max(((g - slice_for_rank(w, 0, rank, size)).abs().max() / w.abs().max()).item()
               for g, w in pairs)


def _worker(out: Path) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    hierarchical = [2, size // 2] if size > 2 else None
    parallel_state.initialize_model_parallel(context_parallel_size=size,
                                             hierarchical_context_parallel_sizes=hierarchical)
    errors = {}
    for name, case in CASES[size].items():
        cp = ContextParallelSettings(case.algo, ulysses_degree=2, send_recv_overlap=case.overlap,
                                     kv_head_repeat=case.kv_head_repeat)
        error = torch.tensor(_max_error(case, rank, size, cp))
        dist.all_reduce(error, op=dist.ReduceOp.MAX)
        errors[name] = error.item()
    refused = {}
    if size == 2:
        for name, (case, dropout) in REFUSALS.items():
            try:
                _layer(case, ContextParallelSettings(case.algo), dropout)
            except ArgumentError as error:
                refused[name] = str(error)
    if rank == 0:
        out.write_text(json.dumps({"errors": errors, "refused": refused}))
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))

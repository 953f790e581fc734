"""Training with every fused flag on follows the reference loss curve (fp32, tight), and
recompute lowers the activation memory kept for backward without changing loss or gradients."""
import json

import pytest

from conftest import TINY_LLAMA, train_history
from ops_probe import run_probe

ITERS = ["--train-iters", "5"]
TIGHT = dict(rel=1e-5)
# On both sides: YaRN scaling (megatron-core's RoPE and ours must apply the same frequencies and
# attention factor) and packed documents (mock data packs several per row; the attention mask
# keeps them apart in megatron-core's math and in SDPA alike).
SHARED = ["--rope-scaling-type", "yarn", "--rope-scaling-factor", "2",
          "--original-max-position-embeddings", "16", "--reset-attention-mask"]
ALL_FUSED = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
             "--use-fused-rotary-pos-emb", "--use-mc2", "--tensor-model-parallel-size", "2",
             "--sequence-parallel", "--recompute-granularity", "full", "--recompute-method",
             "block", "--recompute-num-layers", "2", "--recompute-activation-function"]


def test_all_fused_flags_train_like_reference(tmp_path):
    reference = train_history(tmp_path, TINY_LLAMA + ITERS + SHARED, nproc=1, name="reference")
    fused = train_history(tmp_path, TINY_LLAMA + ITERS + SHARED + ALL_FUSED, nproc=2)
    assert fused["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert fused["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)
    assert reference["loss"][-1] < reference["loss"][0]


def _with(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_recompute_lowers_activation_memory_with_unchanged_gradients(tmp_path):
    out = tmp_path / "recompute.json"
    model = _with(_with(TINY_LLAMA, "--seq-length", "128"), "--max-position-embeddings", "128")
    result = run_probe(["recompute", str(out)] + model + ["--train-iters", "1"], nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(out.read_text())
    none = runs.pop("none")
    for name, run in runs.items():
        assert run["loss"] == pytest.approx(none["loss"], rel=1e-6), name
        assert run["grad_norm"] == pytest.approx(none["grad_norm"], rel=1e-5), name
    assert runs["full"]["saved_bytes"] < none["saved_bytes"] / 4
    assert runs["selective"]["saved_bytes"] < none["saved_bytes"] * 0.6
    assert runs["activation"]["saved_bytes"] < none["saved_bytes"] * 0.9

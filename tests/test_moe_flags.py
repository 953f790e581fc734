"""The MoE flags change what the MoE layer computes as megatron-core's fields say: capacity drops
tokens, padding to capacity drops the same ones, shared experts add a branch, softmax_topk routes
without renormalising, and --moe-grouped-gemm without grouped_gemm runs the same experts."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_LLAMA, _free_port
from modellink.arguments import ArgumentError, parse_args
from modellink.models.layer_spec import operator_paths
from moe_probe import MOE

TOKENS_PER_LAYER, TOPK, EXPERTS = 2 * 32, 2, 4


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "moe.json"
    # Kept after ROOT: a GPU machine's wheels may come on PYTHONPATH (tests/gpu/run.sh).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
               "PYTHONPATH")])), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
         f"--master-port={_free_port()}", str(ROOT / "tests" / "moe_probe.py"), str(out)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


def test_capacity_factor_drops_tokens_and_changes_the_loss(probe):
    # --moe-expert-capacity-factor 0.5: each expert keeps half an even share of the routes.
    capacity = math.ceil(TOKENS_PER_LAYER * TOPK / EXPERTS * 0.5)
    assert probe["dropless"]["routed"] == [TOKENS_PER_LAYER * TOPK] * 2
    assert probe["capacity"]["routed"] == [capacity * EXPERTS] * 2
    assert probe["capacity"]["loss"] != probe["dropless"]["loss"]


def test_padding_to_capacity_drops_the_same_tokens_and_keeps_the_loss(probe):
    assert probe["capacity_pad"]["routes"] == probe["capacity"]["routes"]
    assert probe["capacity_pad"]["loss"] == pytest.approx(probe["capacity"]["loss"], abs=1e-6)


def test_position_drop_policy_keeps_other_tokens(probe):
    # --moe-token-drop-policy position keeps the earliest tokens, probs the most likely ones.
    assert probe["capacity_position"]["routed"] == probe["capacity"]["routed"]
    assert probe["capacity_position"]["routes"] != probe["capacity"]["routes"]
    assert probe["capacity_position"]["loss"] != probe["capacity"]["loss"]


def test_shared_experts_and_their_gate_add_parameters_and_change_the_output(probe):
    hidden, shared = 64, 96
    # SwiGLU shared expert: fc1 hidden -> 2*shared, fc2 shared -> hidden, in each of 2 layers.
    extra = 2 * (hidden * 2 * shared + shared * hidden)
    assert probe["shared"]["params"] == probe["dropless"]["params"] + extra
    assert probe["shared_gate"]["params"] == probe["shared"]["params"] + 2 * hidden
    losses = {probe[name]["loss"] for name in ("dropless", "shared", "shared_gate")}
    assert len(losses) == 3


def test_softmax_topk_routes_without_renormalising(probe):
    # aux_loss (default): softmax over the chosen experts, so their weights sum to 1;
    # softmax_topk: top-k of the softmax over all experts, which sums to less.
    assert probe["dropless"]["prob_sum"] == pytest.approx([1.0, 1.0])
    assert all(0 < s < 0.99 for s in probe["softmax_topk"]["prob_sum"])
    assert probe["softmax_topk"]["loss"] != probe["dropless"]["loss"]


def test_grouped_gemm_without_the_package_runs_the_same_experts(probe):
    assert probe["grouped_gemm"]["loss"] == probe["dropless"]["loss"]
    assert probe["grouped_gemm"]["params"] == probe["dropless"]["params"]
    line = operator_paths(parse_args(MOE + ["--moe-grouped-gemm"], world_size=1), "cpu")
    assert "MoE experts: SequentialMLP (--moe-grouped-gemm asked, grouped_gemm package absent)" \
        in line


def test_permutation_async_comm_is_named_in_the_log_and_changes_nothing(probe):
    args = parse_args(MOE + ["--moe-permutation-async-comm"], world_size=1)
    assert any(note.startswith("--moe-permutation-async-comm has no effect")
               for note in args.compatibility_notes)
    assert probe["async_comm"]["loss"] == probe["dropless"]["loss"]


@pytest.mark.parametrize("extra,needle", [
    (["--moe-pad-expert-input-to-capacity"], "needs --moe-expert-capacity-factor"),
    (["--moe-expert-capacity-factor", "0"], "--moe-expert-capacity-factor 0.0 must be > 0"),
    (["--moe-expert-capacity-factor", "1", "--moe-router-load-balancing-type", "sinkhorn"],
     "does not work with"),
    (["--shared-expert-gate"], "needs --moe-shared-expert-intermediate-size"),
    (["--moe-router-load-balancing-type", "group_limited_greedy"], "needs --topk-group"),
    (["--moe-train-capacity-factor", "1"], "legacy SwitchMLP MoE layer, not built here"),
])
def test_bad_moe_flags_give_one_line_error(extra, needle):
    with pytest.raises(ArgumentError, match=needle) as err:
        parse_args(MOE + extra, world_size=1)
    assert "\n" not in str(err.value)


def test_moe_flags_need_num_experts():
    with pytest.raises(ArgumentError, match="need --num-experts"):
        parse_args(TINY_LLAMA + ["--moe-expert-capacity-factor", "1"], world_size=1)

"""Context parallelism end to end: every algorithm and layout trains the tiny model to the
losses and grad norms of one process (fp32), with causal and packed-sample masks, with GQA,
with VPP and with MoE (EP=1 and 2); a CP=2 checkpoint resumes at CP=1 and at CP=4; bad
combinations fail at parse time with one line.

Three torchrun jobs (1, 2 and 4 ranks) run all the pretrain() calls; the tests read their
histories. The packed-sample runs train on short documents (5-20 tokens), so every sample of
32 tokens holds several and --reset-attention-mask gives a mask that is not plain causal.
"""
import json
from pathlib import Path
from typing import Dict, List

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import TINY_LLAMA, run_in_one_job
from modellink.argument_errors import ArgumentError
from modellink.arguments import parse_args
from modellink.context_parallel_args import context_parallel_settings, hierarchical_sizes
from modellink.inference.arguments import parse_inference_args
from modellink.training.data.datasets import DataError, check_data_files
from modellink.training.data.instruction_batch import length_multiple

ITERS = ["--train-iters", "3"]
TIGHT = dict(rel=1e-5)
CP2 = ["--context-parallel-size", "2"]
ULYSSES, RING = (["--context-parallel-algo", algo] for algo in ("ulysses_cp_algo",
                                                                "megatron_cp_algo"))
HYBRID = ["--context-parallel-size", "4", "--context-parallel-algo", "hybrid_cp_algo",
          "--ulysses-degree-in-cp", "2"]
GENERAL = ["--cp-attention-mask-type", "general"]
MQA = ["--num-query-groups", "1"]
MOE = ["--num-experts", "4", "--moe-router-topk", "2", "--moe-aux-loss-coeff", "0.1"]


def _packed_args(prefix: str) -> List[str]:
    args = [a for a in TINY_LLAMA if a != "--mock-data"]
    return args + ["--data-path", prefix, "--tokenizer-type", "NullTokenizer",
                   "--split", "100,0,0", "--reset-attention-mask"]


def _write_short_documents(prefix: Path) -> str:
    rng = numpy.random.default_rng(0)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for _ in range(200):
        length = int(rng.integers(5, 20))
        # NullTokenizer --vocab-size 100: token 100 is the EOD that ends a document.
        builder.add_document(numpy.append(rng.integers(0, 100, length), 100).astype(numpy.int32),
                             [length + 1])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def _job(tmp: Path, nproc: int, runs: Dict[str, List[str]]) -> Dict[str, dict]:
    specs = [{"args": args, "history": str(tmp / f"{name}.json")} for name, args in runs.items()]
    result = run_in_one_job(specs, nproc)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return {name: json.loads((tmp / f"{name}.json").read_text()) for name in runs}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Dict[str, dict]:
    tmp = tmp_path_factory.mktemp("cp")
    causal = TINY_LLAMA + ITERS
    packed = _packed_args(_write_short_documents(tmp / "short_docs")) + ITERS
    checkpoint = str(tmp / "checkpoint")
    histories = _job(tmp, 1, {"ref": causal, "ref_packed": packed, "ref_mqa": causal + MQA,
                              "ref_moe": causal + MOE})
    histories.update(_job(tmp, 2, {
        "ulysses": causal + CP2 + ULYSSES,
        "ring": causal + CP2 + RING,
        "ulysses_packed": packed + CP2 + ULYSSES + GENERAL,
        "ring_packed": packed + CP2 + RING + GENERAL + ["--use-cp-send-recv-overlap"],
        "ulysses_mqa_repeat": causal + MQA + CP2 + ULYSSES
        + ["--kv-head-repeat-before-uly-alltoall"],
        "saved_at_cp2": causal + CP2 + RING + ["--save", checkpoint, "--exit-interval", "1"],
        "resumed_at_cp1": causal + ["--load", checkpoint],
        "moe_cp2": causal + MOE + CP2 + RING,
    }))
    histories.update(_job(tmp, 4, {
        "hybrid": causal + HYBRID,
        "hybrid_packed": packed + HYBRID + GENERAL,
        "cp2_tp2_sp": causal + CP2 + RING + ["--tensor-model-parallel-size", "2",
                                             "--sequence-parallel"],
        "cp2_pp2": causal + CP2 + ULYSSES + ["--pipeline-model-parallel-size", "2"],
        "cp2_dp2_distopt": causal + CP2 + ULYSSES + ["--use-distributed-optimizer"],
        "cp2_vpp": causal + CP2 + RING + ["--pipeline-model-parallel-size", "2",
                                          "--num-layers-per-virtual-pipeline-stage", "1"],
        "moe_cp2_ep2": causal + MOE + CP2 + ULYSSES + ["--expert-model-parallel-size", "2"],
        "resumed_at_cp4": causal + ["--context-parallel-size", "4"] + RING
        + ["--load", checkpoint],
    }))
    return histories


def _assert_same_training(run: dict, reference: dict) -> None:
    assert len(run["loss"]) == len(reference["loss"]) == 3
    assert run["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)


@pytest.mark.parametrize("name", ["ulysses", "ring", "hybrid", "cp2_tp2_sp", "cp2_pp2",
                                  "cp2_dp2_distopt", "cp2_vpp"])
def test_context_parallel_matches_one_process(runs, name):
    _assert_same_training(runs[name], runs["ref"])
    assert runs["ref"]["loss"][-1] < runs["ref"]["loss"][0]


@pytest.mark.parametrize("name", ["ulysses_packed", "ring_packed", "hybrid_packed"])
def test_packed_sample_masks_match_one_process(runs, name):
    # The documents' mask changes the losses, so a run that dropped it could not match.
    assert runs["ref_packed"]["loss"][0] != pytest.approx(runs["ref"]["loss"][0], rel=1e-3)
    _assert_same_training(runs[name], runs["ref_packed"])


def test_ulysses_repeats_kv_heads_it_cannot_split(runs):
    _assert_same_training(runs["ulysses_mqa_repeat"], runs["ref_mqa"])


@pytest.mark.parametrize("name", ["moe_cp2", "moe_cp2_ep2"])
def test_moe_with_its_load_balancing_loss_matches_one_process(runs, name):
    # megatron-core counts the router's tokens per expert over TP x CP and scales the
    # auxiliary loss's gradient by CP, so each CP rank's share adds up to the CP=1 loss.
    # Coefficient 0.1: doubling it moves the grad norms by ~7e-3, far beyond TIGHT.
    assert runs["ref_moe"]["grad_norm"] != pytest.approx(runs["ref"]["grad_norm"], rel=1e-3)
    _assert_same_training(runs[name], runs["ref_moe"])


@pytest.mark.parametrize("name", ["resumed_at_cp1", "resumed_at_cp4"])
def test_cp2_checkpoint_resumes_at_other_sizes(runs, name):
    assert runs["saved_at_cp2"]["iteration"] == [1]
    assert runs[name]["iteration"] == [2, 3]
    assert runs["saved_at_cp2"]["loss"] == pytest.approx(runs["ref"]["loss"][:1], **TIGHT)
    assert runs[name]["loss"] == pytest.approx(runs["ref"]["loss"][1:], **TIGHT)


def _parse(*extra: str, world: int = 2):
    return parse_args(TINY_LLAMA + ["--train-iters", "1", *extra], world_size=world)


@pytest.mark.parametrize("extra, world, message", [
    (["--context-parallel-size", "3"], 3, "--seq-length 32 does not divide into 2 x "
                                          "--context-parallel-size 3"),
    (CP2 + ["--tensor-model-parallel-size", "4", "--sequence-parallel", "--num-query-groups",
            "4", "--seq-length", "36", "--max-position-embeddings", "36"], 8,
     "--sequence-parallel: the 18 positions per context-parallel rank"),
    (HYBRID[:4], 4, "hybrid_cp_algo needs --ulysses-degree-in-cp"),
    (HYBRID[:4] + ["--ulysses-degree-in-cp", "3"], 4, "--ulysses-degree-in-cp 3 must divide"),
    (HYBRID[:4] + ["--ulysses-degree-in-cp", "4"], 4, "leave at least two ring ranks"),
    (["--context-parallel-size", "8", "--seq-length", "64", "--max-position-embeddings", "64"],
     8, "does not divide the 4 attention heads"),
    (CP2 + MQA, 2, "add --kv-head-repeat-before-uly-alltoall"),
    (CP2 + RING + ["--attention-dropout", "0.1"], 2, "--attention-dropout above 0"),
    (CP2 + RING + ["--position-embedding-type", "alibi"], 2, "alibi is not supported"),
    (CP2 + RING + ["--attn-logit-softcapping", "30"], 2, "--attn-logit-softcapping is not"),
    (CP2 + RING + ["--reset-attention-mask"], 2, "add --cp-attention-mask-type general"),
    (CP2 + ["--is-instruction-dataset", "--tokenizer-padding-side", "left"], 2,
     "--tokenizer-padding-side left gives batches an attention mask"),
], ids=["seq-chunks", "sp-share", "hybrid-degree-missing", "hybrid-degree-divides",
        "hybrid-no-ring", "ulysses-heads", "kv-groups", "ring-dropout", "ring-alibi",
        "ring-softcap", "reset-mask", "left-padding"])
def test_bad_combinations_fail_at_parse_time(extra, world, message):
    with pytest.raises(ArgumentError, match=message):
        _parse(*extra, world=world)


def test_settings_groups_and_length_multiples_follow_the_flags():
    args = _parse(*HYBRID, "--use-cp-send-recv-overlap", world=4)
    cp = context_parallel_settings(args)
    assert (cp.algo, cp.ulysses_degree, cp.send_recv_overlap) == ("hybrid_cp_algo", 2, True)
    assert hierarchical_sizes(args) == [2, 2]
    ulysses = _parse(*CP2, "--use-cp-send-recv-overlap")
    assert ulysses.context_parallel_algo == "ulysses_cp_algo"  # ModelLink's default
    assert hierarchical_sizes(ulysses) is None
    assert "--use-cp-send-recv-overlap has no effect with --context-parallel-algo " \
           "ulysses_cp_algo" in ulysses.compatibility_notes
    assert context_parallel_settings(_parse()) is None
    assert _parse(*CP2, *RING, "--reset-attention-mask", *GENERAL).cp_attention_mask_type == \
        "general"
    assert length_multiple(2, True, 8, context_parallel=4) == 16
    assert length_multiple(1, False, 8, context_parallel=2) == 8
    assert length_multiple(3, True, 1, context_parallel=2) == 12


def test_generation_refuses_context_parallelism(tmp_path):
    with pytest.raises(ArgumentError, match="--context-parallel-size 2: generation"):
        parse_inference_args(TINY_LLAMA + CP2 + ["--load", str(tmp_path)], world_size=2)


def _write_instruction_rows(prefix: Path, segments: List[List[int]]) -> str:
    for key in ("input_ids", "attention_mask", "labels"):
        builder = IndexedDatasetBuilder(f"{prefix}_packed_{key}_document.bin", dtype=numpy.int32)
        for row in segments:
            values = row if key == "attention_mask" else list(range(1, len(row) + 1))
            builder.add_document(numpy.array(values, dtype=numpy.int32), [len(row)])
        builder.finalize(f"{prefix}_packed_{key}_document.idx")
    return str(prefix)


@pytest.mark.parametrize("packed", [False, True])
def test_packed_instruction_data_needs_the_general_mask_type(tmp_path, packed):
    rows = [[1] * 10, [1] * 6 + [2] * 6] if packed else [[1] * 10, [1] * 12]
    prefix = _write_instruction_rows(tmp_path / "sft", rows * 8)
    data = [a for a in TINY_LLAMA if a != "--mock-data"] + [
        "--is-instruction-dataset", "--data-path", prefix, "--split", "100,0,0"]
    args = parse_args(data + CP2 + RING + ["--train-iters", "1"], world_size=2)
    if packed:
        with pytest.raises(DataError, match="add --cp-attention-mask-type general"):
            check_data_files(args)
    else:
        check_data_files(args)
    check_data_files(parse_args(data + CP2 + RING + GENERAL + ["--train-iters", "1"],
                                world_size=2))

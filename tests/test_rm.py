"""Reward model (`trainer.py --stage rm`): the Bradley-Terry loss and the last-token rewards
equal a hand computation, TP/PP/DP layouts reproduce one process, training ranks chosen above
rejected (held-out pairs too), and bad input fails in one line before training."""
import math
import re
import subprocess
import sys

import numpy
import pytest
import torch

from conftest import ROOT, TINY_LLAMA, run_in_one_job
from modellink.arguments import ArgumentError, parse_args
from modellink.training.posttrain.rm_data import RewardCollator
from modellink.training.posttrain.rm_step import RewardForwardStep
from test_dpo import (
    IGNORE,
    _plain_args,
    _pretraining_dataset,
    assert_same_pair_history,
    pairwise_args,
    write_pair_files,
    write_pairwise_dataset,
)


def write_vocabulary_pairs(prefix, count, seed=0):
    """Pairs whose chosen response draws its tokens from ids [1, 50) and the rejected one from
    [50, 100) after a random prompt: a preference that held-out pairs share."""
    rng = numpy.random.default_rng(seed)
    rows = {f"{side}_{key}": [] for side in ("chosen", "rejected") for key in ("input_ids",
                                                                              "labels")}
    for _ in range(count):
        prompt = rng.integers(1, 100, int(rng.integers(3, 8))).tolist()
        for side, low in (("chosen", 1), ("rejected", 50)):
            response = rng.integers(low, low + 49, int(rng.integers(2, 6))).tolist()
            rows[f"{side}_input_ids"].append(prompt + response)
            rows[f"{side}_labels"].append([IGNORE] * len(prompt) + response)
    return write_pair_files(prefix, rows)


def rm_args(prefix, *extra):
    return pairwise_args(prefix, "rm", *extra)


# --- the loss and the rewards by hand --------------------------------------------------------

def _pair(prompt, chosen, rejected):
    pair = {}
    for side, response in (("chosen", chosen), ("rejected", rejected)):
        pair[f"{side}_input_ids"] = numpy.array(prompt + response)
        pair[f"{side}_labels"] = numpy.array([IGNORE] * len(prompt) + response)
    return pair


@pytest.mark.parametrize("left", [False, True])
def test_rewards_are_last_token_scores_and_the_loss_is_bradley_terry(left):
    pairs = [_pair([5, 6], [7, 8, 9], [3]), _pair([4], [1], [2, 2, 2, 2])]
    batch = RewardCollator(seq_length=8, variable=True, multiple=1, left=left)(pairs)
    # Whole sequences are the model's input: no last token is dropped as a mere target.
    assert batch["tokens"].shape == (4, 5)
    rows = [p[f"{side}_input_ids"].tolist() for side in ("chosen", "rejected") for p in pairs]
    for row, ids in enumerate(rows):
        real = batch["tokens"][row, -len(ids):] if left else batch["tokens"][row, :len(ids)]
        assert real.tolist() == ids
    lengths = [len(ids) for ids in rows]
    last = [4] * 4 if left else [n - 1 for n in lengths]
    assert batch["score_mask"].argmax(dim=1).tolist() == last
    assert batch["score_mask"].sum().item() == 4

    scores = torch.randn(4, 5, 1, generator=torch.Generator().manual_seed(0))
    step = RewardForwardStep(parse_args(rm_args("unused"), world_size=1))
    loss, count, report = step.loss_func(batch["score_mask"], scores)
    rewards = [float(scores[row, index, 0]) for row, index in enumerate(last)]
    by_hand = [math.log1p(math.exp(-(rewards[i] - rewards[i + 2]))) for i in range(2)]
    assert float(loss) == pytest.approx(sum(by_hand), rel=1e-6)
    assert int(count) == 2
    assert report["rewards/chosen"].tolist() == pytest.approx([rewards[0] + rewards[1], 2])
    assert report["rewards/rejected"].tolist() == pytest.approx([rewards[2] + rewards[3], 2])
    margins = [rewards[0] - rewards[2], rewards[1] - rewards[3]]
    assert report["rewards/margins"].tolist() == pytest.approx([sum(margins), 2])
    assert report["rewards/accuracies"].tolist() == [sum(m > 0 for m in margins), 2]


# --- training runs --------------------------------------------------------------------------

LAYOUTS = {
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2_distopt": ["--use-distributed-optimizer"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process job and one two-rank job, several runs each."""
    import json

    root = tmp_path_factory.mktemp("rm")
    prefix = write_pairwise_dataset(root / "pairs")
    vocabulary = write_vocabulary_pairs(root / "vocabulary", count=96, seed=1)
    single = {"full": rm_args(prefix, "--variable-seq-lengths"),
              "learn": rm_args(vocabulary, "--split", "80,20,0", "--train-iters", "8",
                               "--global-batch-size", "16", "--micro-batch-size", "4",
                               "--eval-interval", "8", "--eval-iters", "1",
                               "--save", str(root / "rm_checkpoint"))}
    double = {name: rm_args(prefix, "--variable-seq-lengths", *extra)
              for name, extra in LAYOUTS.items()}
    # A language model's checkpoint starts a reward model (its output layer left out); a
    # language-model run given the reward model fails, so it comes last.
    language_model = str(root / "language_model")
    lm_args = _plain_args(_pretraining_dataset(root), "--save", language_model)
    first = run_in_one_job(
        [{"args": args, "history": str(root / f"{name}.json")} for name, args in single.items()]
        + [{"args": lm_args},
           {"args": rm_args(prefix, "--load", language_model, "--finetune", "--train-iters", "1"),
            "history": str(root / "from_lm.json")},
           {"args": _plain_args(_pretraining_dataset(root), "--load", str(root / "rm_checkpoint"),
                                "--finetune")}], nproc=1)
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a reward model (saved with --stage rm)" in errors[0], \
        first.stdout[-3000:] + first.stderr[-5000:]
    single["from_lm"] = None
    second = run_in_one_job([{"args": args, "history": str(root / f"{name}.json")}
                             for name, args in double.items()], nproc=2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    histories = {name: json.loads((root / f"{name}.json").read_text())
                 for name in [*single, *double]}
    return histories, first, root


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(layout, runs):
    histories, _, _ = runs
    assert_same_pair_history(histories[layout], histories["full"])


def test_training_ranks_chosen_above_rejected(runs):
    histories, first, _ = runs
    learn = histories["learn"]
    accuracies = [m["rewards/accuracies"] for m in learn["metrics"]]
    assert accuracies[0] < 0.8, accuracies
    assert min(accuracies[-3:]) >= 0.9, accuracies
    # Held-out pairs (the 20% validation split): the loss is well below chance's log 2.
    (iteration, held_out_loss), = learn["validation"]
    assert iteration == 8 and held_out_loss < 0.5 * math.log(2), held_out_loss
    assert len(histories["from_lm"]["loss"]) == 1
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        assert f"| {name}: " in first.stdout
    assert "logps/chosen" not in first.stdout


# --- bad input ------------------------------------------------------------------------------

def test_bad_flags_fail_in_one_line():
    base = TINY_LLAMA + ["--train-iters", "1"]
    cases = {
        ("--stage", "rm"): "--stage rm trains on chosen/rejected pairs: add --is-pairwise-dataset",
        ("--stage", "rm", "--is-pairwise-dataset", "--dpo-beta", "0.2"):
            "--dpo-beta applies to DPO: add --stage dpo",
        ("--stage", "rm", "--is-pairwise-dataset", "--context-parallel-size", "2"):
            "--stage rm with --context-parallel-size > 1",
        ("--stage", "rm", "--is-pairwise-dataset"): "--stage rm needs --data-path with pairwise",
    }
    for extra, message in cases.items():
        with pytest.raises(ArgumentError, match=re.escape(message)):
            parse_args(base + list(extra), world_size=2)


def test_orm_is_mindspeed_llms_name_for_the_reward_stage():
    assert parse_args(pairwise_args("unused", "orm"), world_size=1).stage == "rm"
    # posttrain_gpt.py (MindSpeed-LLM's entry script) reaches the same parser.
    done = subprocess.run([sys.executable, str(ROOT / "posttrain_gpt.py"), "--stage", "ppo"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "invalid choice: 'ppo'" in done.stderr


def test_non_pairwise_data_fails_before_training(tmp_path):
    from modellink.training.data.datasets import DataError, check_data_files
    from test_finetune import write_instruction_dataset

    instruction = write_instruction_dataset(tmp_path / "sft", count=8)
    with pytest.raises(DataError, match=r"is instruction data .* --stage dpo\|rm need"):
        check_data_files(parse_args(rm_args(instruction), world_size=1))


def test_converting_a_reward_model_needs_orm(runs, tmp_path):
    """(Conversion with --orm: tests/test_rm_export.py.)"""
    from modellink.checkpoint.convert import ConvertOptions, convert
    from modellink.checkpoint.errors import ConversionError

    _, _, root = runs
    with pytest.raises(ConversionError, match="is a reward model .* add --orm"):
        convert(ConvertOptions(str(root / "rm_checkpoint"), str(tmp_path / "hf"), "mg", "hf"))

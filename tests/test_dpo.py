"""DPO (`trainer.py --stage dpo`): the loss and rewards equal trl's on the same
log-probabilities, every parallel layout reproduces one process, LoRA's reference is the base
model and its adapter gradients equal autograd's through an independent plain-PyTorch model
(one process and TP=2), training raises preference accuracy, and bad input fails in one line
before training."""
import contextlib
import json
import math
import re
from collections import defaultdict
from types import SimpleNamespace

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import TINY_LLAMA, run_in_one_job
from plain_gpt import sequence_logps
from modellink.arguments import ArgumentError, parse_args
from modellink.training.data.datasets import DataError, check_data_files
from modellink.training.posttrain.dpo_loss import PairLogps, dpo_losses

IGNORE = -100
TIGHT = dict(rel=1e-5)


def write_pairwise_dataset(prefix, count=32, seed=0):
    """Pairs as AlpacaStylePairwiseHandler writes them: the chosen response counts up from the
    prompt's last token, the rejected one is random (token ids in [1, 100))."""
    rng = numpy.random.default_rng(seed)
    rows = defaultdict(list)
    for _ in range(count):
        prompt = rng.integers(1, 90, int(rng.integers(3, 8))).tolist()
        length = int(rng.integers(2, 6))
        responses = {"chosen": [prompt[-1] + 1 + i for i in range(length)],
                     "rejected": rng.integers(1, 100, length).tolist()}
        for side, response in responses.items():
            rows[f"{side}_input_ids"].append(prompt + response)
            rows[f"{side}_labels"].append([IGNORE] * len(prompt) + response)
    return write_pair_files(prefix, rows)


def write_pair_files(prefix, rows) -> str:
    """The `_packed_{chosen,rejected}_{input_ids,labels}_document` files of `rows`."""
    for key, values in rows.items():
        path = f"{prefix}_packed_{key}_document"
        builder = IndexedDatasetBuilder(path + ".bin", dtype=numpy.int32)
        for row in values:
            builder.add_document(numpy.array(row, dtype=numpy.int32), [len(row)])
        builder.finalize(path + ".idx")
    return str(prefix)


def pairwise_args(prefix, stage, *extra):
    args = [a for a in TINY_LLAMA if a != "--mock-data"]
    return args + ["--data-path", prefix, "--split", "100,0,0", "--tokenizer-type",
                   "NullTokenizer", "--prompt-type", "empty", "--stage", stage,
                   "--is-pairwise-dataset", "--train-iters", "3", "--lr", "1e-3", *extra]


def dpo_args(prefix, *extra):
    return pairwise_args(prefix, "dpo", *extra)


# --- the loss against trl ---------------------------------------------------------------

def _trl_loss(loss_type, beta, logps, tokens):
    """trl's DPOTrainer._compute_loss on the given sequence log-probabilities: a stand-in
    model returns per-token log-probs that sum to them over each response's tokens."""
    from trl import DPOTrainer

    chosen, rejected, ref_chosen, ref_rejected = logps
    rows, length = 2 * len(chosen), int(tokens.max()) + 2
    completion = torch.zeros(rows, length, dtype=torch.long)
    per_token = torch.zeros(rows, length - 1)
    for row, (total, count) in enumerate(zip(torch.cat([chosen, rejected]), tokens)):
        completion[row, 1:1 + count] = 1
        per_token[row, :count] = total / count
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token),
                              is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False,
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(rows, length, dtype=torch.long),
              "attention_mask": torch.ones(rows, length, dtype=torch.long),
              "completion_mask": completion, "ref_chosen_logps": ref_chosen,
              "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, lambda **_: outputs, inputs, False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("loss_type,smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2),
                                                  ("hinge", 0.0), ("ipo", 0.0)])
def test_loss_and_rewards_equal_trl(loss_type, smoothing):
    generator = torch.Generator().manual_seed(3)
    logps = [-torch.rand(6, generator=generator) * 20 for _ in range(4)]
    tokens = torch.randint(1, 9, (12,), generator=generator)
    beta = 0.3
    ours = dpo_losses(PairLogps(*logps, tokens[:6], tokens[6:]), beta, loss_type, smoothing)
    if smoothing:
        # Conservative DPO: the sigmoid loss of the pair and of the pair flipped, weighted.
        kept, _ = _trl_loss("sigmoid", beta, logps, tokens)
        flipped_logps = [logps[1], logps[0], logps[3], logps[2]]
        flipped, _ = _trl_loss("sigmoid", beta, flipped_logps, torch.cat([tokens[6:], tokens[:6]]))
        expected = (1 - smoothing) * kept + smoothing * flipped
        _, metrics = _trl_loss("sigmoid", beta, logps, tokens)
    else:
        expected, metrics = _trl_loss(loss_type, beta, logps, tokens)
    assert float(ours.losses.mean()) == pytest.approx(expected, rel=1e-6)
    assert float(ours.chosen_rewards.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-6)
    assert float(ours.rejected_rewards.mean()) == pytest.approx(metrics["rewards/rejected"],
                                                                rel=1e-6)
    margins = ours.chosen_rewards - ours.rejected_rewards
    assert float(margins.mean()) == pytest.approx(metrics["rewards/margins"], rel=1e-6)
    accuracy = float((ours.chosen_rewards > ours.rejected_rewards).float().mean())
    assert accuracy == pytest.approx(metrics["rewards/accuracies"])
    assert 0 < accuracy < 1  # the fixed batch has pairs on both sides


def test_pref_ftx_adds_the_chosen_mean_token_nll():
    logps = PairLogps(torch.tensor([-6.0]), torch.tensor([-4.0]), torch.tensor([-5.0]),
                      torch.tensor([-5.0]), torch.tensor([3.0]), torch.tensor([2.0]))
    plain = dpo_losses(logps, 0.1, "sigmoid").losses
    mixed = dpo_losses(logps, 0.1, "sigmoid", pref_ftx=0.5).losses
    assert float(mixed - plain) == pytest.approx(0.5 * 6.0 / 3.0)


# --- training runs --------------------------------------------------------------------------

LAYOUTS = {
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
    "pp2": ["--pipeline-model-parallel-size", "2"],
    "dp2_distopt": ["--use-distributed-optimizer"],
    "pp2_vpp": ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage",
                "1"],
}
LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2",
        "--lora-r", "4", "--lora-alpha", "8"]
LORA_SCALING = 8 / 4
# Runs whose last step tests/step_capture.py records (weights, gradients, micro-batches).
CAPTURED = ("full", "lora", "lora_tp2_sp")


def _history(path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One single-process job and one two-rank job, several runs each. The single-process
    job first saves a two-layer checkpoint and ends with a run given it as --ref-model. The
    CAPTURED runs' last steps are recorded whole."""
    root = tmp_path_factory.mktemp("dpo")
    prefix = write_pairwise_dataset(root / "pairs")
    other = str(root / "two_layers")
    single = {"full": dpo_args(prefix, "--variable-seq-lengths"),
              "lora": dpo_args(prefix, *LORA),
              "learn": dpo_args(prefix, "--train-iters", "12", "--global-batch-size", "16",
                                "--micro-batch-size", "4", "--lr", "3e-3")}
    double = {name: dpo_args(prefix, "--variable-seq-lengths", *extra)
              for name, extra in LAYOUTS.items()}
    double["lora_tp2_sp"] = dpo_args(prefix, *LORA, "--tensor-model-parallel-size", "2",
                                     "--sequence-parallel")
    first = run_in_one_job(
        [{"args": _plain_args(_pretraining_dataset(root), "--save", other, "--num-layers", "2")}]
        + [_run(root, name, args) for name, args in single.items()]
        + [{"args": dpo_args(prefix, "--ref-model", other)}], nproc=1)
    second = run_in_one_job([_run(root, name, args) for name, args in double.items()], nproc=2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    histories = {name: _history(root / f"{name}.json") for name in [*single, *double]}
    captured = {name: torch.load(root / f"{name}.pt", weights_only=False) for name in CAPTURED}
    return SimpleNamespace(histories=histories, first=first, other=other, captured=captured)


def _run(root, name, args):
    run = {"args": args, "history": str(root / f"{name}.json")}
    if name in CAPTURED:
        run["capture"] = str(root / f"{name}.pt")
    return run


def assert_same_pair_history(run, reference):
    """A layout's three steps equal one process's: loss, grad norm and the pair metrics."""
    assert len(run["loss"]) == 3
    assert run["loss"] == pytest.approx(reference["loss"], **TIGHT)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], **TIGHT)
    for ours, theirs in zip(run["metrics"], reference["metrics"]):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(layout, runs):
    histories = runs.histories
    reference = histories["full"]
    assert_same_pair_history(histories[layout], reference)
    # The policy starts as the reference: every reward is 0 and the loss log(2).
    assert reference["loss"][0] == pytest.approx(math.log(2), rel=1e-6)
    assert reference["loss"][-1] < reference["loss"][0]


def test_lora_reference_is_the_base_model(runs):
    """B starts at 0, so the adapted policy equals the base model: with the adapters off for
    the reference, the first loss is exactly log(2); then the adapters train, under TP=2 too."""
    histories = runs.histories
    lora = histories["lora"]
    assert lora["loss"][0] == pytest.approx(math.log(2), rel=1e-6)
    assert lora["metrics"][0]["rewards/margins"] == 0
    assert lora["loss"][-1] < lora["loss"][0]
    assert histories["lora_tp2_sp"]["loss"] == pytest.approx(lora["loss"], **TIGHT)


def _adapted(before, adapters, merged):
    """One-process weights without adapters: each adapted W is W + scaling * B A if
    `merged`, else the base W alone."""
    weights = {name: value for name, value in before.items() if ".lora_" not in name}
    if merged:
        for name, a in adapters.items():
            if name.endswith(".lora_A.default.weight"):
                base = name[:-len("lora_A.default.weight")]
                b = adapters[base + "lora_B.default.weight"]
                weights[base + "weight"] = before[base + "weight"] + LORA_SCALING * b @ a
    return weights


@contextlib.contextmanager
def _one_thread():
    # Matrices of a few thousand entries: more threads only spin-wait on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@_one_thread()
def _independent_lora_dpo(record, adapters_in_reference=False, beta=0.1):
    """The captured step's mean pair loss (sigmoid DPO) through plain_gpt, the policy's
    adapted weights functions of A and B, the reference the base model; its gradients
    with respect to every A and B by autograd."""
    adapters = {name: value.clone().requires_grad_(True)
                for name, value in record["before"].items() if ".lora_" in name}
    policy = _adapted(record["before"], adapters, merged=True)
    with torch.no_grad():
        reference = _adapted(record["before"], adapters, merged=adapters_in_reference)
    losses = []
    for batch in record["batches"]:
        with torch.no_grad():
            ref = sequence_logps(reference, batch)
        logps = sequence_logps(policy, batch)
        pairs = logps.shape[0] // 2  # chosen rows, then rejected rows
        ratio = logps - ref
        losses.append(-torch.nn.functional.logsigmoid(beta * (ratio[:pairs] - ratio[pairs:])))
    loss = torch.cat(losses).mean()
    loss.backward()
    return loss.item(), {name: value.grad for name, value in adapters.items()}


def _worst_relative_error(ours, theirs):
    return max(float((ours[n] - theirs[n]).norm() / theirs[n].norm()) for n in theirs)


@pytest.mark.parametrize("name", ["lora", "lora_tp2_sp"])
def test_lora_gradients_equal_an_independent_forward(name, runs):
    """The last step's adapter gradients (TP=2 ones gathered) equal autograd's through a
    plain-PyTorch model with W + scaling * B A as its weights and the base model as the
    reference. B is non-zero by then: a reference with the adapters on is off by ~1.5e-3
    (measured), and so is this step had the reference pass kept them on."""
    record = runs.captured[name]
    loss, grads = _independent_lora_dpo(record)
    assert record["loss"] == pytest.approx(loss, rel=1e-5)
    assert set(record["grads"]) == set(grads)  # the optimizer trains exactly the adapters
    assert _worst_relative_error(record["grads"], grads) < 1e-5
    _, wrong = _independent_lora_dpo(record, adapters_in_reference=True)
    assert _worst_relative_error(record["grads"], wrong) > 1e-4


def test_lora_base_stays_frozen(runs):
    """Only the adapters move; every base weight, the reference's, is as it was loaded."""
    for name in ("lora", "lora_tp2_sp"):
        record = runs.captured[name]
        for weight, before in record["before"].items():
            after = record["after"][weight]
            if ".lora_" in weight:
                assert not torch.equal(after, before), weight
            else:
                assert torch.equal(after, before), weight


def test_lora_tp2_step_matches_one_process(runs):
    """TP=2 with sequence parallelism reaches the last step with the weights and adapter
    gradients of one process (Adam's first steps amplify round-off, hence 1e-4)."""
    single, tp2 = runs.captured["lora"], runs.captured["lora_tp2_sp"]
    assert _worst_relative_error(tp2["before"], single["before"]) < 1e-4
    assert _worst_relative_error(tp2["grads"], single["grads"]) < 1e-4


def test_variable_seq_lengths_pads_each_micro_batch(runs):
    """The layout runs all read --variable-seq-lengths: its micro-batches are as long as
    their longest pair (a multiple of 8, --pad-to-multiple-of), not --seq-length 32."""
    widths = [batch["tokens"].shape[1] for batch in runs.captured["full"]["batches"]]
    assert max(widths) < 32 and all(width % 8 == 0 for width in widths), widths
    assert runs.captured["lora"]["batches"][0]["tokens"].shape[1] == 32


def test_training_raises_preference_accuracy(runs):
    histories, first = runs.histories, runs.first
    accuracies = [m["rewards/accuracies"] for m in histories["learn"]["metrics"]]
    assert accuracies[0] == 0  # ties: the policy is the reference
    assert min(accuracies[-3:]) >= 0.9, accuracies
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"):
        assert f"| {name}: " in first.stdout


# --- bad input ------------------------------------------------------------------------------

def test_bad_flags_fail_in_one_line():
    base = TINY_LLAMA + ["--train-iters", "1"]
    cases = {
        ("--stage", "dpo"): "add --is-pairwise-dataset",
        ("--is-pairwise-dataset",): "add --stage dpo",
        ("--stage", "dpo", "--is-pairwise-dataset", "--context-parallel-size", "2"):
            "--context-parallel-size > 1",
        ("--stage", "dpo", "--is-pairwise-dataset", "--dpo-label-smoothing", "0.6"):
            "--dpo-label-smoothing must be in [0, 0.5)",
        ("--stage", "dpo", "--is-pairwise-dataset", "--dpo-loss-type", "hinge",
         "--dpo-label-smoothing", "0.1"): "applies to --dpo-loss-type sigmoid, not hinge",
        ("--stage", "dpo", "--is-pairwise-dataset", "--dpo-beta", "0"): "--dpo-beta must be > 0",
        ("--stage", "sft"): "add --is-instruction-dataset",
    }
    for extra, message in cases.items():
        with pytest.raises(ArgumentError, match=re.escape(message)):
            parse_args(base + list(extra), world_size=2)


def test_wrong_data_fails_before_training(tmp_path):
    from test_finetune import write_instruction_dataset

    pairs = write_pairwise_dataset(tmp_path / "pairs", count=8)
    instruction = write_instruction_dataset(tmp_path / "sft", count=8)
    pretraining = _pretraining_dataset(tmp_path)
    cases = {
        "is instruction data": dpo_args(instruction),
        "is a pretraining dataset": dpo_args(pretraining),
        "is a pairwise dataset": _plain_args(pairs, "--is-instruction-dataset"),
    }
    for message, args in cases.items():
        with pytest.raises(DataError, match=message):
            check_data_files(parse_args(args, world_size=1))


def _pretraining_dataset(tmp_path):
    prefix = str(tmp_path / "corpus")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for _ in range(8):
        builder.add_document(numpy.arange(1, 50, dtype=numpy.int32), [49])
    builder.finalize(prefix + ".idx")
    return prefix


def _plain_args(prefix, *extra):
    return [a for a in TINY_LLAMA if a != "--mock-data"] + [
        "--data-path", prefix, "--split", "100,0,0", "--tokenizer-type", "NullTokenizer",
        "--train-iters", "1", *extra]


def test_reference_of_another_architecture_fails_before_training(runs):
    first, other = runs.first, runs.other
    assert first.returncode != 0
    errors = [line for line in first.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--ref-model {other}: " in errors[0], first.stderr[-2000:]
    assert "weights do not fit" in errors[0]
    # It stopped before its first iteration: only "full" and "lora" logged a 3-iteration run.
    assert first.stdout.count("iteration        1/       3 |") == 2

"""Full fine-tuning on instruction data: what the batches hold (response-only loss, sample
boundaries, per-sample positions and attention), that packed samples do not see each other in
the model, that padding (fixed, per micro-batch, per pipeline step) and tensor parallelism do
not change the loss, and the one-line errors on wrong datasets and flags."""
import json
import os
import subprocess
import sys

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import ROOT, TINY_LLAMA, _free_port, train_history
from modellink.arguments import ArgumentError, parse_args
from modellink.evaluation.benchmarks import load_questions
from modellink.evaluation.scoring import score
from modellink.training.data.datasets import DataError, build_datasets
from modellink.training.data.instruction_batch import (
    InstructionCollator,
    length_multiple,
    pad_step_to_common_length,
)

IGNORE = -100


def _sample(prompt, response, segment=1):
    return {"input_ids": numpy.array(prompt + response),
            "labels": numpy.array([IGNORE] * len(prompt) + response),
            "attention_mask": numpy.full(len(prompt) + len(response), segment)}


def _pack(*samples, pad=0):
    row = {key: numpy.concatenate([s[key] for s in samples]) for key in samples[0]}
    fill = {"input_ids": 0, "labels": IGNORE, "attention_mask": 0}
    return {key: numpy.concatenate([value, numpy.full(pad, fill[key])])
            for key, value in row.items()}


def write_instruction_dataset(prefix, count=64, seq_length=32, seed=0):
    """Rows as preprocess_data.py writes them: some single samples of varied length, some
    packs of two or three samples; token ids in [1, 100)."""
    rng = numpy.random.default_rng(seed)
    rows = []
    for index in range(count):
        samples = []
        for segment in range(1, 1 + (1 if index % 2 else int(rng.integers(2, 4)))):
            prompt = rng.integers(1, 100, int(rng.integers(2, 6))).tolist()
            response = rng.integers(1, 100, int(rng.integers(1, 5))).tolist()
            samples.append(_sample(prompt, response, segment))
        used = sum(len(s["input_ids"]) for s in samples)
        rows.append(_pack(*samples, pad=seq_length - used if index % 2 == 0 else 0))
    for key in ("input_ids", "attention_mask", "labels"):
        path = f"{prefix}_packed_{key}_document"
        builder = IndexedDatasetBuilder(path + ".bin", dtype=numpy.int32)
        for row in rows:
            builder.add_document(row[key].astype(numpy.int32), [len(row[key])])
        builder.finalize(path + ".idx")
    return str(prefix)


def test_batch_masks_prompts_and_keeps_samples_apart():
    a, b = _sample([5, 6, 7], [8, 9]), _sample([10, 11], [12, 13, 14], segment=2)
    batch = InstructionCollator(seq_length=16, variable=False, multiple=1)([_pack(a, b, pad=3)])
    tokens, labels = batch["tokens"][0], batch["labels"][0]
    assert tokens[:9].tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13] and len(tokens) == 16
    # Targets are next tokens; loss only where the target is a response token of the same
    # sample: a's 8, 9 (from positions 2, 3) and b's 12, 13, 14 (positions 6, 7, 8).
    assert batch["loss_mask"][0].nonzero().flatten().tolist() == [2, 3, 6, 7, 8]
    assert labels[[2, 3, 6, 7, 8]].tolist() == [8, 9, 12, 13, 14]
    assert batch["position_ids"][0, :10].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    mask = batch["attention_mask"][0, 0]  # True = masked
    assert not mask[6, 5] and mask[6, 4] and mask[4, 5]  # within b, not back into a, causal
    assert (~mask).any(dim=1).all()  # every query (padding too) attends to something


def test_single_samples_need_no_mask_and_variable_lengths_round_up():
    collate = InstructionCollator(seq_length=32, variable=True, multiple=8)
    batch = collate([_sample([1, 2, 3], [4, 5]), _sample([1] * 9, [2])])
    assert "attention_mask" not in batch  # causal attention already keeps padding out
    assert batch["tokens"].shape == (2, 16)  # longest 10 tokens -> 9 positions -> 16
    assert collate([_sample([1] * 40, [2])])["tokens"].shape == (1, 32)  # truncated, as ModelLink
    assert length_multiple(4, True) == 8 and length_multiple(3, True) == 24
    assert length_multiple(4, False) == 8


def test_pipeline_steps_pad_to_their_longest_micro_batch():
    collate = InstructionCollator(seq_length=32, variable=True, multiple=1)
    short = collate([_sample([1, 2], [3])])
    long = collate([_pack(_sample([1, 2], [3]), _sample([4, 5, 6], [7], segment=2))])
    (iterator,), length = pad_step_to_common_length([iter([short, long])], 2)
    first, second = next(iterator), next(iterator)
    assert length == 6 and first["tokens"].shape == second["tokens"].shape == (1, 6)
    assert first["loss_mask"].sum() == short["loss_mask"].sum()
    padded = pad_step_to_common_length([iter([long, short])], 2)[0][0]
    mask = next(padded)["attention_mask"]
    assert torch.equal(mask, long["attention_mask"])


def test_packed_samples_do_not_attend_across_and_loss_is_response_only(tmp_path):
    out = tmp_path / "probe.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "finetune_probe.py"), str(out),
           *TINY_LLAMA, "--train-iters", "1", "--jit-compile"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--jit-compile has no effect on cpu" in result.stdout  # an NPU-only setting
    for kind, found in json.loads(out.read_text()).items():
        assert found["packed"] < 1e-5, kind  # the same logits as each sample alone
        assert found["unmasked"] > 1e-3, kind  # (without the mask the second sample differs)
        assert found["tokens"] == found["hand_tokens"] == 7, kind
        assert found["loss"] == pytest.approx(found["hand_loss"], rel=1e-6), kind
        # --tokenizer-padding-side left moves the padding, not the loss
        assert found["left_gap"] < 1e-5 * found["right_loss"], kind


def _finetune_args(prefix, *extra):
    args = [a for a in TINY_LLAMA if a != "--mock-data"]
    return args + ["--data-path", prefix, "--is-instruction-dataset", "--split", "100,0,0",
                   "--tokenizer-type", "NullTokenizer", "--train-iters", "4",
                   "--prompt-type", "empty", *extra]


def test_padding_and_parallel_layouts_give_the_same_loss(tmp_path):
    prefix = write_instruction_dataset(tmp_path / "sft")
    fixed = train_history(tmp_path, _finetune_args(prefix), nproc=1, name="fixed")
    tp2 = train_history(tmp_path, _finetune_args(
        prefix, "--variable-seq-lengths", "--tensor-model-parallel-size", "2",
        "--sequence-parallel"), nproc=2, name="tp2")
    pp2 = train_history(tmp_path, _finetune_args(
        prefix, "--variable-seq-lengths", "--pipeline-model-parallel-size", "2"),
        nproc=2, name="pp2")
    assert tp2["loss"] == pytest.approx(fixed["loss"], rel=1e-5)
    assert pp2["loss"] == pytest.approx(fixed["loss"], rel=1e-5)
    assert tp2["grad_norm"] == pytest.approx(fixed["grad_norm"], rel=1e-5)
    assert pp2["grad_norm"] == pytest.approx(fixed["grad_norm"], rel=1e-5)


def _datasets(argv):
    from modellink.data.tokenizers import build_tokenizer

    args = parse_args(argv, world_size=1)
    return build_datasets(args, build_tokenizer(args))


def test_dataset_errors_name_the_problem(tmp_path):
    prefix = write_instruction_dataset(tmp_path / "sft", count=8)
    train, _ = _datasets(_finetune_args(prefix, "--eval-iters", "0", "--no-shuffle"))
    assert len(train) == 32 and train[0]["input_ids"].tolist() == train[8]["input_ids"].tolist()
    with pytest.raises(DataError, match="without '_packed_input_ids_document'"):
        _datasets(_finetune_args(prefix + "_packed_input_ids_document"))
    pretraining = tmp_path / "corpus_text_document"
    builder = IndexedDatasetBuilder(f"{pretraining}.bin", dtype=numpy.int32)
    builder.add_document(numpy.arange(1, 40, dtype=numpy.int32), [39])
    builder.finalize(f"{pretraining}.idx")
    with pytest.raises(DataError, match="is a pretraining dataset.*drop --is-instruction-dataset"):
        _datasets(_finetune_args(str(pretraining)))
    pretrain_argv = _finetune_args(prefix)
    pretrain_argv.remove("--is-instruction-dataset")
    with pytest.raises(DataError, match="is an instruction dataset.*add --is-instruction-dataset"):
        _datasets(pretrain_argv)
    os.remove(f"{prefix}_packed_labels_document.idx")
    with pytest.raises(DataError, match="not found: .*sft_packed_labels_document.idx"):
        _datasets(_finetune_args(prefix))


def test_weighted_blend_of_instruction_datasets(tmp_path):
    first = write_instruction_dataset(tmp_path / "a", count=8)
    second = write_instruction_dataset(tmp_path / "b", count=8, seed=1)
    argv = _finetune_args(first)
    argv[argv.index(first)] = "0.5"
    argv[argv.index("--data-path") + 2:argv.index("--data-path") + 2] = [first, "0.5", second]
    train, _ = _datasets(argv)
    assert len(train) == 32
    assert {int(train[i]["dataset_id"]) for i in range(len(train))} == {0, 1}


@pytest.mark.parametrize("extra, message", [
    (["--variable-seq-lengths"], "--variable-seq-lengths applies to instruction data"),
    (["--no-shuffle"], "--no-shuffle applies to instruction data"),
])
def test_instruction_flags_without_instruction_data_are_refused(tiny_llama, extra, message):
    with pytest.raises(ArgumentError, match=message):
        parse_args(tiny_llama + ["--train-iters", "1"] + extra, world_size=1)


def test_unknown_prompt_type_is_refused(tiny_llama):
    with pytest.raises(ArgumentError, match="--prompt-type: unknown prompt type 'nope'"):
        parse_args(tiny_llama + ["--train-iters", "1", "--prompt-type", "nope"], world_size=1)


class _Echo:
    """Answers "<answer>\\n..." for the questions it knows, "?" otherwise."""
    chat = False

    def __init__(self, known):
        self.known = known

    def generate(self, prompts, max_new_tokens):
        return [f" {self.known[p]}\n1 + 1 = 2" if p in self.known else "?" for p in prompts]


def test_exact_match_benchmark_scores_the_first_line(tmp_path):
    test = tmp_path / "test.jsonl"
    rows = [{"question": f"{i} + 1 =", "answer": str(i + 1)} for i in range(4)]
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = load_questions("exact_match", str(tmp_path))
    model = _Echo({"0 + 1 =": "1", "1 + 1 =": "2", "2 + 1 =": "4"})
    result = score("exact_match", model, questions, batch_size=2)
    assert (result.correct, result.total) == (2, 4)
    assert load_questions("exact_match", str(test), max_samples=1)[0].prompt == "0 + 1 ="

"""Reward models beyond training: a tiny random transformers LlamaForSequenceClassification
imported with convert_ckpt.py --orm (TP=2) starts examples/llama2/rm_llama2_7b_ptd.sh on two
CPU ranks (shrunk through its environment variables); the trained model, exported with --orm
from TP=2 and from a TP=1 reshard, scores every pair as ours does in transformers, imports
back at TP=1 x PP=2 and exports bit for bit, and evaluation.py --task rm_accuracy reports
the accuracy and margin that transformers' scores give. Bad input fails in one line."""
import json
import os
import subprocess
import sys

import numpy
import pytest
import torch
import transformers
from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

from conftest import ROOT, _free_port, run_example
from data_helpers import demo, preprocess, write_jsonl  # noqa: F401
from modellink.argument_errors import ArgumentError
from modellink.checkpoint.cli import main as convert_main
from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.reward import classifier_architecture
from modellink.evaluation.runner import run as evaluation_run
from modellink.models.families import get_family
from modellink.training.checkpoint.checkpointing import CheckpointError
from modellink.training.data.datasets import DataError
from test_finetune_example import MODEL

SCORES = dict(abs=1e-4)


def _convert(*argv):
    assert convert_main([*map(str, argv)]) == 0


def _export(load, save):
    _convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", load,
             "--save-dir", save, "--orm")


MODEL_FLAGS = ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128",
               "--num-attention-heads", "4", "--seq-length", "64",
               "--max-position-embeddings", "64", "--normalization", "RMSNorm", "--swiglu",
               "--position-embedding-type", "rope", "--disable-bias-linear",
               "--untie-embeddings-and-output-weights", "--make-vocab-size-divisible-by", "1",
               "--norm-epsilon", "1e-5"]


def _evaluate_at_tp2(load, data, out, tokenizer):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "evaluation.py"), "--task", "rm_accuracy",
           "--data-path", data, "--load", load, "--eval-output", out, "--device", "cpu",
           "--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", tokenizer,
           "--evaluation-batch-size", "8", "--max-length", "64",
           "--tensor-model-parallel-size", "2", *MODEL_FLAGS]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(open(out).read())["rm_accuracy"]


def _pairs(prefix):
    rows = {side: IndexedDataset(f"{prefix}_packed_{side}_input_ids_document")
            for side in ("chosen", "rejected")}
    return [[numpy.array(rows[side][i]).tolist() for side in ("chosen", "rejected")]
            for i in range(len(rows["chosen"]))]


def _hf_scores(folder, pairs):
    """transformers' own pooling: right padding with the exported pad_token_id."""
    model = transformers.LlamaForSequenceClassification.from_pretrained(folder,
                                                                      dtype=torch.float32)
    pad = model.config.pad_token_id
    rows = [row for pair in pairs for row in pair]
    ids = torch.full((len(rows), max(map(len, rows))), pad)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)], mask[i, :len(row)] = torch.tensor(row), 1
    with torch.no_grad():
        scores = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return [(scores[2 * i], scores[2 * i + 1]) for i in range(len(pairs))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo):  # noqa: F811
    """The example script's reward model (TP=2, started from an imported one), its exports
    and imports."""
    root = tmp_path_factory.mktemp("rm_export")
    vocab = len(transformers.AutoTokenizer.from_pretrained(demo["tokenizer"]))
    torch.manual_seed(0)
    transformers.LlamaForSequenceClassification(transformers.LlamaConfig(
        vocab_size=vocab, num_labels=1, **MODEL)).save_pretrained(root / "hf_start")
    _convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
             root / "hf_start", "--save-dir", root / "start", "--orm",
             "--target-tensor-parallel-size", "2")
    # A language model, for the refusals.
    transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=vocab, **MODEL)
                                  ).save_pretrained(root / "hf_lm")
    _convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
             root / "hf_lm", "--save-dir", root / "lm")
    with open(demo["instruction"], encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle][:48]
    pairs = [dict(record, chosen=record["output"], rejected=records[i - 1]["output"])
             for i, record in enumerate(records)]
    write_jsonl(root / "pairs.jsonl", [{k: v for k, v in p.items() if k != "output"}
                                       for p in pairs])
    preprocess(root / "pairs.jsonl", root / "pairs", demo["tokenizer"], "--handler-name",
               "AlpacaStylePairwiseHandler", "--prompt-type", "llama2", "--seq-length", "64")
    result = run_example(
        "llama2/rm_llama2_7b_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=str(root / "pairs"), TOKENIZER_PATH=demo["tokenizer"],
        CKPT_LOAD_DIR=str(root / "start"), CKPT_SAVE_DIR=str(root / "rm"),
        LOG_DIR=str(root / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 64 --max-position-embeddings 64",
        EXTRA_ARGS="--device cpu --train-iters 4 --global-batch-size 8 --lr 1e-3 "
                   "--eval-interval 4 --eval-iters 1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _export(root / "rm", root / "hf_tp2")
    _convert("--load-model-type", "mg", "--save-model-type", "mg", "--load-dir", root / "rm",
             "--save-dir", root / "rm_tp1", "--orm")
    _export(root / "rm_tp1", root / "hf_tp1")
    _convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
             root / "hf_tp2", "--save-dir", root / "imported", "--orm",
             "--target-pipeline-parallel-size", "2")
    _export(root / "imported", root / "hf_again")
    return root, demo["tokenizer"], (root / "logs" / "rm_llama2_7b.log").read_text()


def test_example_script_trains_a_reward_model(trained):
    root, _, log = trained
    assert "iteration        4/       4" in log and "rewards/accuracies: " in log
    assert (root / "rm" / "latest_checkpointed_iteration.txt").read_text() == "4"


def test_export_is_a_sequence_classifier_and_import_export_is_bit_identical(trained):
    root, _, _ = trained
    config = json.loads((root / "hf_tp2" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["id2label"] == {"0": "LABEL_0"} and config["pad_token_id"] is not None
    assert config["pad_token_id"] not in [config["eos_token_id"]]
    for other in ("hf_tp1", "hf_again"):
        for name in ("model.safetensors", "config.json"):
            assert (root / other / name).read_bytes() == (root / "hf_tp2" / name).read_bytes()
    saved = torch.load(root / "imported" / "iter_0000000" / "mp_rank_00_001" /
                       "model_optim_rng.pt", weights_only=False)
    assert saved["args"].stage == "rm"
    assert saved["model"]["output_layer.weight"].shape == (1, 64)


def test_rm_accuracy_matches_transformers_scores(trained, tmp_path):
    root, tokenizer, _ = trained
    pairs = _pairs(str(root / "pairs"))
    hf = _hf_scores(str(root / "hf_tp2"), pairs)
    stdout, tp2 = _evaluate_at_tp2(str(root / "rm"), str(root / "pairs"),
                                   str(tmp_path / "tp2.json"), tokenizer)
    ours = [(r["chosen"], r["rejected"]) for r in tp2["records"]]
    assert numpy.array(ours) == pytest.approx(numpy.array(hf), **SCORES)
    accuracy = sum(c > r for c, r in hf) / len(hf)
    margin = sum(c - r for c, r in hf) / len(hf)
    # No pair's margin is within the tolerance, so both sides must agree on every pair.
    assert min(abs(c - r) for c, r in hf) > 10 * SCORES["abs"]
    assert tp2["total"] == {"correct": round(accuracy * len(hf)), "total": len(hf),
                            "accuracy": pytest.approx(accuracy)}
    assert tp2["mean margin"] == pytest.approx(margin, **SCORES)
    assert "rm_accuracy" in stdout and "mean margin: " in stdout


# --- bad input ------------------------------------------------------------------------------

def test_conversion_refusals_are_one_line(trained, capsys):
    root, _, _ = trained
    cases = [
        (["--load-model-type", "mg", "--load-dir", root / "rm", "--save-dir", root / "x1"],
         "is a reward model (trained with --stage rm): add --orm"),
        (["--load-model-type", "mg", "--load-dir", root / "lm", "--save-dir", root / "x2",
          "--orm"], "is a language model, not a reward model"),
        (["--load-model-type", "hf", "--load-dir", root / "hf_lm", "--save-dir", root / "x4",
          "--orm"], "is no ForSequenceClassification"),
        (["--load-model-type", "hf", "--load-dir", root / "hf_tp2", "--save-dir", root / "x3"],
         "holds a sequence classifier (LlamaForSequenceClassification): add --orm"),
    ]
    for argv, message in cases:
        assert convert_main([*map(str, argv)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert not any((root / name).exists() for name in ("x1", "x2", "x3", "x4"))
    with pytest.raises(ConversionError, match="baichuan2 has no transformers sequence classifier"):
        classifier_architecture(get_family("baichuan2"))


def test_rm_accuracy_bad_input_fails_before_loading(trained, tmp_path):
    root, tokenizer, _ = trained
    base = ["--data-path", str(root / "pairs"), "--device", "cpu", "--tokenizer-type",
            "PretrainedFromHF", "--tokenizer-name-or-path", tokenizer,
            "--eval-output", str(tmp_path / "out.json"), *MODEL_FLAGS]
    with pytest.raises(CheckpointError, match="holds a language model, not a reward model"):
        evaluation_run(["--task", "rm_accuracy", "--load", str(root / "lm"), *base])
    with pytest.raises(ArgumentError, match="rm_accuracy scores with a reward model: run it"):
        evaluation_run(["--task", "rm_accuracy", "ppl", "--load", str(root / "rm"), *base])
    pretraining = tmp_path / "text"
    builder = IndexedDatasetBuilder(f"{pretraining}.bin", dtype=numpy.int32)
    builder.add_document(numpy.arange(3, 9, dtype=numpy.int32), [6])
    builder.finalize(f"{pretraining}.idx")
    with pytest.raises(DataError, match="is a pretraining dataset"):
        evaluation_run(["--task", "rm_accuracy", "--load", str(root / "rm"), *base,
                        "--data-path", str(pretraining)])
    assert not (tmp_path / "out.json").exists()

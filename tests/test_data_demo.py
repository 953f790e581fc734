"""The built-in demo: files, determinism, held-out test split, loadable tokenizer."""

import argparse
import filecmp
import json
import os
import subprocess
import sys

from transformers import AutoTokenizer

from modellink.data.demo import generate_demo
from modellink.data.tokenizers import add_tokenizer_arguments, build_tokenizer


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_demo_files_and_tokenizer(tmp_path):
    paths = generate_demo(str(tmp_path / "demo"), num_train=300, seed=3)
    pretrain, instruction, test = (_rows(paths[k]) for k in ("pretrain", "instruction", "test"))
    assert all(set(r) == {"text"} for r in pretrain)
    assert len(instruction) == 300 and all(set(r) == {"instruction", "input", "output"} for r in instruction)
    assert len(test) == 200 and all(set(r) == {"question", "answer"} for r in test)
    # Held out: no test question appears in training, and every answer is right.
    seen = {r["instruction"] for r in instruction}
    assert not seen & {r["question"] for r in test}
    for row in test:
        a, op, b, _ = row["question"].split()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    statements = {line for r in pretrain for line in r["text"].split("\n")}
    assert {f'{r["instruction"]} {r["output"]}'.rstrip(".") for r in instruction} >= {
        s.rstrip(".") for s in statements}

    hf = AutoTokenizer.from_pretrained(paths["tokenizer"])
    assert 256 < len(hf) <= 1024
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert hf.convert_ids_to_tokens(hf.encode("123", add_special_tokens=False)) == ["1", "2", "3"]
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    tokenizer = build_tokenizer(parser.parse_args(["--tokenizer-type", "PretrainedFromHF",
                                                   "--tokenizer-name-or-path", paths["tokenizer"]]))
    text = pretrain[0]["text"]
    assert tokenizer.detokenize(hf.encode(text, add_special_tokens=False)) == text


def test_demo_is_deterministic_and_seeded(tmp_path):
    a = generate_demo(str(tmp_path / "a"), num_train=200, seed=5)
    b = generate_demo(str(tmp_path / "b"), num_train=200, seed=5)
    c = generate_demo(str(tmp_path / "c"), num_train=200, seed=6)
    for key in ("pretrain", "instruction", "test", "pairs_train", "pairs_test"):
        assert filecmp.cmp(a[key], b[key], shallow=False)
        assert not filecmp.cmp(a[key], c[key], shallow=False)
    assert filecmp.cmp(os.path.join(a["tokenizer"], "tokenizer.json"),
                       os.path.join(b["tokenizer"], "tokenizer.json"), shallow=False)


def test_demo_command_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "modellink.data.demo", "--output-dir", str(tmp_path),
                             "--num-train", "50", "--seed", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["instruction.jsonl", "pairs_test.jsonl", "pairs_train.jsonl",
                                            "pretrain.jsonl", "test.jsonl", "tokenizer"]
    assert len(_rows(tmp_path / "instruction.jsonl")) == 50

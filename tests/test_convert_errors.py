"""Bad input to convert_ckpt.py: one clear `error:` line, exit status 2, nothing written; a
failure mid-way leaves no output directory behind."""
import os

import pytest
import transformers

from modellink.checkpoint.cli import main as convert_main
from test_convert_families import SMALL, convert, save_tiny_hf


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    save_tiny_hf("llama2", root / "llama")
    save_tiny_hf("mixtral", root / "mixtral")
    sharded = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**SMALL))
    sharded.save_pretrained(root / "sharded", max_shard_size="100KB")
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
            str(root / "llama"), "--save-dir", str(root / "mg"),
            "--target-pipeline-parallel-size", "2")
    return root


def _fail(capsys, *argv):
    assert convert_main(list(argv)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]


def _to_mg(root, source, save, *extra):
    return ("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(root / source),
            "--save-dir", str(save), *extra)


@pytest.mark.parametrize("extra,message", [
    (["--model-type-hf", "baichuan3"], "unknown --model-type-hf 'baichuan3'"),
    (["--model-type-hf", "qwen"],
     "does not match config.json model_type 'llama'; use --model-type-hf llama2"),
    (["--target-tensor-parallel-size", "3"], "does not divide the 4 attention heads"),
    (["--target-tensor-parallel-size", "4"], "does not divide the 2 query groups"),
    (["--target-pipeline-parallel-size", "3"],
     "not divisible by --target-pipeline-parallel-size 3"),
    (["--target-pipeline-parallel-size", "2", "--num-layer-list", "1,2"], "summing to 4 layers"),
    (["--target-expert-parallel-size", "2"], "needs an MoE model"),
    (["--tokenizer-model", "/nonexistent/tokenizer.model"], "does not exist"),
    (["--add-qkv-bias"], "has no QKV bias"),
    (["--lora-load", "/some/lora"], "LoRA"),
])
def test_bad_input_is_refused_before_writing(hf_dirs, capsys, tmp_path, extra, message):
    save = tmp_path / "out"
    assert message in _fail(capsys, *_to_mg(hf_dirs, "llama", save, *extra))
    assert not save.exists() and os.listdir(tmp_path) == []


def test_experts_not_divisible(hf_dirs, capsys, tmp_path):
    message = _fail(capsys, *_to_mg(hf_dirs, "mixtral", tmp_path / "out", "--model-type-hf",
                                    "mixtral", "--target-expert-parallel-size", "3"))
    assert "does not divide the 4 experts" in message


def test_missing_hf_shard(hf_dirs, capsys, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(hf_dirs / "sharded", broken)
    victim = sorted(broken.glob("model-*.safetensors"))[1]
    victim.unlink()
    message = _fail(capsys, *_to_mg(tmp_path, "broken", tmp_path / "out"))
    assert "checkpoint shard missing" in message and victim.name in message
    assert not (tmp_path / "out").exists()


def test_missing_megatron_shard(hf_dirs, capsys, tmp_path):
    import shutil
    broken = tmp_path / "mg"
    shutil.copytree(hf_dirs / "mg", broken)
    os.remove(broken / "iter_0000000" / "mp_rank_00_001" / "model_optim_rng.pt")
    message = _fail(capsys, "--load-model-type", "mg", "--save-model-type", "hf",
                    "--load-dir", str(broken), "--save-dir", str(tmp_path / "out"))
    assert "checkpoint shard missing" in message and "mp_rank_00_001" in message


def test_non_empty_save_dir_needs_overwrite(hf_dirs, capsys, tmp_path):
    save = tmp_path / "out"
    save.mkdir()
    (save / "keep.txt").write_text("mine")
    assert "is not empty; pass --overwrite" in _fail(capsys, *_to_mg(hf_dirs, "llama", save))
    assert os.listdir(save) == ["keep.txt"]
    assert convert_main(list(_to_mg(hf_dirs, "llama", save, "--overwrite"))) == 0
    assert sorted(os.listdir(save)) == ["iter_0000000", "latest_checkpointed_iteration.txt"]


def test_failure_midway_leaves_nothing(hf_dirs, capsys, tmp_path):
    """A shard truncated after its header: conversion fails while writing the second stage."""
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(hf_dirs / "sharded", broken)
    last = sorted(broken.glob("model-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-1000])
    save = tmp_path / "out"
    message = _fail(capsys, *_to_mg(tmp_path, "broken", save,
                                    "--target-pipeline-parallel-size", "2"))
    assert "truncated" in message
    assert sorted(os.listdir(tmp_path)) == ["broken"]  # no output, no temporary directory

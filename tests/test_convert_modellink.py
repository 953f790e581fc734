"""Conversion as ModelLink users run it: convert a Hugging Face LLaMA-2 with the converter's
defaults, train it with the LLaMA-2 example script (which pads the vocabulary with
--make-vocab-size-divisible-by 1), convert it back into `<hf folder>/mg2hg/`, load that with
transformers. With a learning rate of 0 nothing trains, so every weight comes back bit for bit
and the original folder is left exactly as it was."""
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest
import torch
import transformers

from conftest import run_example
from modellink.checkpoint.cli import main as convert_main
from remote_code_families import load_remote, model_type_hf
from test_convert_families import convert, save_tiny_hf
from test_example_scripts import _dataset, _tiny_sentencepiece

VOCAB = 64  # the sentencepiece vocabulary: not a multiple of 128, so padding to it would show
MODEL_ARGS = ("--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 --num-attention-heads 4 "
              "--seq-length 32 --max-position-embeddings 32")


def _hf_folder(root: Path) -> Path:
    """A LLaMA-2 model folder as downloaded: bf16 weights, config, tokenizer files."""
    folder = root / "llama-2-hf"
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, rms_norm_eps=1e-5)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # random norms, so a swapped one would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    shutil.copy(_tiny_sentencepiece(root), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True}))
    return folder


def _hashes(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _pretrain_script(root: Path, load: Path, save: Path) -> subprocess.CompletedProcess:
    return run_example(
        "llama2/pretrain_llama2_7b_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=_dataset(root), TOKENIZER_MODEL=str(root / "llama-2-hf" / "tokenizer.model"),
        CKPT_LOAD_DIR=str(load), CKPT_SAVE_DIR=str(save), MODEL_ARGS=MODEL_ARGS,
        LOG_DIR=str(save.parent / "logs"),
        EXTRA_ARGS="--device cpu --train-iters 1 --lr 0 --min-lr 0 --global-batch-size 4 "
                   "--eval-iters 0")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """HF -> Megatron (defaults) -> one step at lr 0 through the example script."""
    root = tmp_path_factory.mktemp("modellink")
    hf = _hf_folder(root)
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(hf),
            "--save-dir", str(root / "mg"), "--target-tensor-parallel-size", "2")
    result = _pretrain_script(root, root / "mg", root / "trained")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "iteration        1/       1" in result.stdout
    return root, hf


def test_round_trip_into_mg2hg_is_bit_identical(trained):
    root, hf = trained
    before = _hashes(hf)
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
            str(root / "trained"), "--save-dir", str(hf))
    after = _hashes(hf)
    assert {k: v for k, v in after.items() if not k.startswith("mg2hg/")} == before
    out = hf / "mg2hg"
    for name in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        assert after[f"mg2hg/{name}"] == before[name], name
    original = transformers.AutoModelForCausalLM.from_pretrained(hf).state_dict()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert back.keys() == original.keys()
    for name, tensor in original.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(back[name], tensor), name
    assert json.loads((out / "config.json").read_text())["vocab_size"] == VOCAB
    assert transformers.AutoTokenizer.from_pretrained(out)("alpha beta")["input_ids"] == \
        transformers.AutoTokenizer.from_pretrained(hf)("alpha beta")["input_ids"]


def test_existing_mg2hg_is_kept_without_overwrite(trained, capsys):
    root, hf = trained
    (hf / "mg2hg").mkdir(exist_ok=True)
    (hf / "mg2hg" / "notes.txt").write_text("mine")
    argv = ["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
            str(root / "trained"), "--save-dir", str(hf)]
    assert convert_main(argv) == 2
    assert f"--save-dir {hf / 'mg2hg'} is not empty; pass --overwrite" in capsys.readouterr().err
    assert (hf / "mg2hg" / "notes.txt").read_text() == "mine"


def test_remote_code_folder_gets_its_code_and_config_back(tmp_path):
    """ChatGLM3 as published: its own config keys, modeling and tokenizer code beside."""
    hf = tmp_path / "chatglm3-6b"
    save_tiny_hf("chatglm3", hf)
    for name in ("modeling_chatglm.py", "tokenization_chatglm.py", "tokenizer.model"):
        (hf / name).write_text(f"# {name}\n")
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--model-type-hf",
            model_type_hf("chatglm3"), "--load-dir", str(hf), "--save-dir", str(tmp_path / "mg"),
            "--target-tensor-parallel-size", "2")
    before = _hashes(hf)
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--model-type-hf",
            model_type_hf("chatglm3"), "--load-dir", str(tmp_path / "mg"), "--save-dir", str(hf))
    after = _hashes(hf)
    assert {k: v for k, v in after.items() if not k.startswith("mg2hg/")} == before
    assert sorted(k for k in after if k.startswith("mg2hg/")) == [
        "mg2hg/config.json", "mg2hg/model.safetensors", "mg2hg/modeling_chatglm.py",
        "mg2hg/tokenization_chatglm.py", "mg2hg/tokenizer.model"]
    (original, original_config), (back, back_config) = load_remote(hf), load_remote(hf / "mg2hg")
    assert back_config == original_config
    assert back.keys() == original.keys()
    assert all(torch.equal(back[name], tensor) for name, tensor in original.items())


def test_folder_of_another_vocabulary_is_refused(trained, tmp_path, capsys):
    """Its tokenizer files would not fit the weights; nothing is written."""
    root, hf = trained
    other = tmp_path / "other-hf"
    other.mkdir()
    config = json.loads((hf / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, vocab_size=VOCAB + 36)))
    assert convert_main(["--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
                 str(root / "mg"), "--save-dir", str(other)]) == 2
    assert (f"--save-dir {other / 'config.json'} has vocab_size {VOCAB + 36} but --load-dir "
            f"holds a {VOCAB}-token model") in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["config.json"]


def test_vocab_padded_otherwise_names_both_sizes_and_the_flag(trained):
    """A checkpoint converted with the old default (128) in the script that pads with 1."""
    root, hf = trained
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(hf),
            "--save-dir", str(root / "mg128"), "--target-tensor-parallel-size", "2",
            "--make-vocab-size-divisible-by", "128")
    result = _pretrain_script(root, root / "mg128", root / "unused")
    assert result.returncode != 0
    assert ("model_optim_rng.pt: the checkpoint's vocabulary is padded to 256 rows, this "
            "run's to 64; pass the --make-vocab-size-divisible-by it was converted or trained "
            "with (ModelLink's converter and scripts use 1), or --padded-vocab-size 256"
            ) in result.stderr
    assert not (root / "unused").exists()

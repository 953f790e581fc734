"""Bad input to convert_ckpt.py: one clear `error:` line, exit status 2, nothing written; a
failure mid-way leaves no output directory behind."""
import argparse
import json
import os

import pytest
import transformers

from modellink.checkpoint.cli import main as convert_main
from modellink.models.families import FamilyConfigError, check_args, get_family
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
    (["--lora-load", "/some/lora"], "merges adapters into a Megatron base"),
    (["--lora-r", "8"], "--lora-r needs --lora-load"),
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


@pytest.mark.parametrize("family,edit,message", [
    ("baichuan2", {"max_position_embeddings": None, "model_max_length": None},
     "config.json has no model_max_length: the 13B model's sequence length"),
    ("internlm2", {"bias": True}, "bias=True is not supported for internlm2"),
    # InternLM-20B has no biases; its RoPE base is InternLM's only one.
    ("internlm", {"bias": False}, "bias=False is not supported for internlm"),
    ("internlm", {"rotary": {"base": 1000000, "type": "dynamic"}},
     "config.json rotary={'base': 1000000"),
    ("internlm2", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ("chatglm3", {"rmsnorm": False}, "rmsnorm=False is not supported for chatglm3"),
    ("chatglm3", {"add_qkv_bias": None}, "config.json has no add_qkv_bias"),
])
def test_remote_code_config_is_refused(capsys, tmp_path, family, edit, message):
    """Configs of the trust_remote_code families whose model modellink cannot build."""
    save_tiny_hf(family, tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    for key, value in edit.items():
        config.pop(key) if value is None else config.update({key: value})
    path.write_text(json.dumps(config))
    assert message in _fail(capsys, *_to_mg(tmp_path, "hf", tmp_path / "out",
                                            "--model-type-hf", family))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family,message", [
    ("baichuan2", "cannot hold num_key_value_heads=2 (the family fixes 4)"),
    ("chatglm3", "add_qkv_bias=False, but --model-type-hf chatglm3 needs True"),
    ("internlm", "add_qkv_bias=False, but --model-type-hf internlm needs True"),
])
def test_export_to_a_family_that_cannot_hold_the_model(hf_dirs, capsys, tmp_path, family,
                                                        message):
    """The tiny Llama has GQA and no QKV bias."""
    assert message in _fail(capsys, "--load-model-type", "mg", "--save-model-type", "hf",
                            "--model-type-hf", family, "--load-dir", str(hf_dirs / "mg"),
                            "--save-dir", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_export_needs_the_family_rotary():
    """Checkpoints from before --rotary-interleaved existed (no such attribute) rotate halves."""
    args = argparse.Namespace(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                              add_bias_linear=False, add_qkv_bias=True, rotary_percent=0.5)
    with pytest.raises(FamilyConfigError, match="trained without --rotary-interleaved"):
        check_args(get_family("chatglm3"), args)
    args.rotary_percent = 1.0
    with pytest.raises(FamilyConfigError, match="rotary_percent=1.0, but .* needs 0.5"):
        check_args(get_family("chatglm3"), args)


def test_export_needs_the_family_dense_bias():
    """Qwen2.5's layout has no output-projection bias, InternLM's needs one; checkpoints from
    before --add-dense-bias existed (no such attribute) have none."""
    args = argparse.Namespace(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                              add_bias_linear=False, add_qkv_bias=True, rotary_percent=1.0)
    with pytest.raises(FamilyConfigError, match="trained without --add-dense-bias"):
        check_args(get_family("internlm"), args)
    args.add_dense_bias = True
    with pytest.raises(FamilyConfigError, match="with --add-dense-bias, but .* cannot hold it"):
        check_args(get_family("qwen25"), args)


def test_export_needs_the_family_moe_settings():
    """Mixtral's config.json has no shared experts nor pre-softmax routing; Qwen2-MoE's needs
    both."""
    args = argparse.Namespace(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                              add_bias_linear=False, add_qkv_bias=False, rotary_percent=1.0,
                              num_experts=4, ffn_hidden_size=128, moe_ffn_hidden_size=128,
                              moe_shared_expert_intermediate_size=48)
    with pytest.raises(FamilyConfigError, match="cannot hold shared experts"):
        check_args(get_family("mixtral"), args)
    args.moe_router_pre_softmax = True
    with pytest.raises(FamilyConfigError, match="moe_router_pre_softmax=True, but .* needs False"):
        check_args(get_family("mixtral"), args)
    args.add_qkv_bias = True
    with pytest.raises(FamilyConfigError, match="shared_expert_gate=False, but .* needs True"):
        check_args(get_family("qwen2_moe"), args)


@pytest.mark.parametrize("family,edit,message", [
    ("gemma", {"hidden_act": "silu"}, "hidden_act='silu' is not supported for gemma"),
    ("gemma2", {"layer_types": ["full_attention"] * 4},
     "layer_types is not supported for gemma2: the layers must repeat"),
    ("gemma2", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True"),
    ("bloom", {"apply_residual_connection_post_layernorm": True},
     "apply_residual_connection_post_layernorm=True is not supported for bloom"),
])
def test_gemma_bloom_config_is_refused(capsys, tmp_path, family, edit, message):
    save_tiny_hf(family, tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    assert message in _fail(capsys, *_to_mg(tmp_path, "hf", tmp_path / "out",
                                            "--model-type-hf", family))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family,message", [
    ("gemma", "swiglu=True, but --model-type-hf gemma needs False"),
    ("bloom", "normalization='RMSNorm', but --model-type-hf bloom needs 'LayerNorm'"),
])
def test_export_of_llama_as_gemma_or_bloom_is_refused(hf_dirs, capsys, tmp_path, family,
                                                       message):
    assert message in _fail(capsys, "--load-model-type", "mg", "--save-model-type", "hf",
                            "--model-type-hf", family, "--load-dir", str(hf_dirs / "mg"),
                            "--save-dir", str(tmp_path / "out"))


def test_export_needs_the_family_features():
    """Checkpoints from before the feature flags existed have none of them on."""
    args = argparse.Namespace(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                              add_bias_linear=False, add_qkv_bias=False, rotary_percent=1.0)
    check_args(get_family("llama2"), args)
    args.post_norm = True
    with pytest.raises(FamilyConfigError, match="post_norm=True, but .* llama2 needs False"):
        check_args(get_family("llama2"), args)
    args.post_norm, args.attn_logit_softcapping = False, 50.0
    with pytest.raises(FamilyConfigError, match="attn_logit_softcapping=50.0, but"):
        check_args(get_family("llama2"), args)

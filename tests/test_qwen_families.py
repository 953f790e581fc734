"""Qwen-1 (the qwen family) beyond the parity cases of test_convert_families.py: its written-out
reference forward, what its config.json turns into and back, and ModelLink's spelling for
Qwen1.5/2/2.5 checkpoints (`--model-type-hf llama2 --add-qkv-bias`, the qwen25 family)."""
import json

import pytest
import torch
import transformers

from modellink.arguments import parse_args
from modellink.models.families import (
    FamilyConfigError, get_family, hf_config_from_args, training_flags)
from remote_code_families import _qwen_reference, _qwen_weights
from test_convert_families import RUN_FLAGS, TOKENS, convert, save_tiny_hf


def _flag(flags, name):
    return flags[flags.index(name) + 1]


def test_reference_computes_qwen2_without_gqa():
    """The written-out Qwen-1 forward (over the c_attn/w1/w2 checkpoint) and transformers'
    Qwen2 (MHA, no o_proj bias: the same function) agree on the same weights, so the reference
    the parity tests hold our model to is itself right."""
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(_qwen_weights())
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.1)
        ids = torch.tensor(TOKENS)
        ours, theirs = _qwen_reference(model)(ids).logits, model(ids).logits
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_config_flags_and_export_without_the_original_config(tmp_path):
    """intermediate_size counts w1 and w2 (twice --ffn-hidden-size), seq_length is --seq-length
    beside max_position_embeddings; a checkpoint exported without its config.json gets
    Qwen-1's own keys back, seq_length from --seq-length."""
    save_tiny_hf("qwen", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    flags = training_flags(get_family("qwen"), config)
    assert (_flag(flags, "--ffn-hidden-size"), _flag(flags, "--seq-length"),
            _flag(flags, "--max-position-embeddings"), _flag(flags, "--kv-channels")) == \
        ("128", "16", "64", "16")
    args = parse_args(flags + RUN_FLAGS[1:], world_size=1)
    args.seq_length = 32  # as a run at another length saves it
    exported = hf_config_from_args(get_family("qwen"), args, config["vocab_size"])
    assert {key: exported[key] for key in ("intermediate_size", "seq_length", "kv_channels",
                                           "layer_norm_epsilon", "rotary_emb_base",
                                           "max_position_embeddings")} == {
        "intermediate_size": 256, "seq_length": 32, "kv_channels": 16,
        "layer_norm_epsilon": 1e-6, "rotary_emb_base": 10000.0, "max_position_embeddings": 64}
    assert not {"rms_norm_eps", "rope_theta", "head_dim"} & set(exported)
    # With the config.json it came from, that config's seq_length stays.
    assert hf_config_from_args(get_family("qwen"), args, config["vocab_size"],
                               base=config)["seq_length"] == 16


@pytest.mark.parametrize("change,message", [
    ({"rotary_pct": 0.5}, "rotary_pct=0.5 is not supported for qwen"),
    ({"no_bias": False}, "no_bias=False is not supported for qwen"),
    ({"intermediate_size": 255}, "intermediate_size=255 is not a multiple of 2"),
    ({"seq_length": None}, "has no seq_length"),
])
def test_refuses_what_it_cannot_build(tmp_path, change, message):
    save_tiny_hf("qwen", tmp_path)
    config = {**json.loads((tmp_path / "config.json").read_text()), **change}
    config = {key: value for key, value in config.items() if value is not None}
    with pytest.raises(FamilyConfigError, match=message):
        training_flags(get_family("qwen"), config)


def test_modellink_spelling_converts_qwen2(tmp_path):
    """ModelLink's Qwen1.5/2/2.5 scripts convert with `--model-type-hf llama2 --add-qkv-bias`:
    both ways it is the qwen25 family, so the biases arrive and come back bit for bit."""
    save_tiny_hf("qwen25_7b", tmp_path / "hf")
    spelling = ("--model-type-hf", "llama2", "--add-qkv-bias")
    flags = convert("--load-model-type", "hf", "--save-model-type", "mg", *spelling,
                    "--load-dir", str(tmp_path / "hf"), "--save-dir", str(tmp_path / "mg"),
                    "--target-tensor-parallel-size", "2")
    assert "--add-qkv-bias" in flags and _flag(flags, "--rotary-base") == "1000000"
    convert("--load-model-type", "mg", "--save-model-type", "hf", *spelling,
            "--load-dir", str(tmp_path / "mg"), "--save-dir", str(tmp_path / "back"))
    original = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[name], original[name]) for name in original)
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "qwen2"

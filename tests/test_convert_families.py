"""Every family, every layout: HF -> Megatron gives transformers' logits in our model, and
Megatron -> HF gives back bit-identical tensors. The trust_remote_code families are checkpoints
in their own layouts of transformers models that compute the same function (see
remote_code_families.py)."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import transformers

from conftest import ROOT, _free_port
from logits_parity import assert_logits_close
from modellink.checkpoint.cli import main as convert_main
from modellink.arguments import parse_args
from modellink.models.families import (
    FamilyConfigError, get_family, hf_config_from_args, preset_flags, training_flags)
from remote_code_families import (
    REMOTE_FAMILIES, expected_round_trip, load_remote, model_type_hf, save_remote)

SMALL = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
# LLaMA 3.1's RoPE scaling over a 48-token original context: with 16 channels per head, one
# frequency each falls in the kept and blended bands, the rest in the divided one. Weights
# 5x the default scale make positions matter (see test_carried_setting_changes_the_logits).
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 48}
LLAMA32_ROPE = dict(LLAMA3_ROPE, factor=32.0)
HF_CONFIGS = {
    "llama2": lambda: transformers.LlamaConfig(**SMALL),
    # The LLaMA line claims its configs by their RoPE settings: LLaMA 3's base, 3.1 and 3.3's
    # scaling by 8, 3.2's by 32 with tied embeddings.
    "llama3": lambda: transformers.LlamaConfig(
        **SMALL, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "llama31": lambda: transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA3_ROPE,
                                                initializer_range=0.1),
    "llama32": lambda: transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA32_ROPE,
                                                initializer_range=0.1, tie_word_embeddings=True),
    "llama33": lambda: transformers.LlamaConfig(**SMALL, rope_parameters=LLAMA3_ROPE,
                                                initializer_range=0.1),
    # A window of 4 keys, half of the 8-token inputs.
    "mistral": lambda: transformers.MistralConfig(**SMALL, sliding_window=4),
    # Qwen2.5-0.5B to 3B: tied embeddings.
    "qwen25": lambda: transformers.Qwen2Config(**SMALL, tie_word_embeddings=True),
    # Qwen2.5-7B to 72B as published: untied, RoPE base 1e6, a sliding window configured but off.
    "qwen25_7b": lambda: transformers.Qwen2Config(
        **SMALL, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        use_sliding_window=False, sliding_window=32, max_window_layers=2),
    # LlamaForCausalLM checkpoints with their own settings: Yi's GQA and RoPE base 5e6,
    # CodeLlama-7B/13B's heads without GQA, RoPE base 1e6 and 32016-token vocabulary.
    "yi": lambda: transformers.LlamaConfig(
        **SMALL, rope_parameters={"rope_type": "default", "rope_theta": 5e6}),
    "codellama": lambda: transformers.LlamaConfig(
        **dict(SMALL, vocab_size=32016, num_key_value_heads=4),
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    # Per-head query/key RMSNorm, no QKV bias, head_dim != hidden / heads.
    "qwen3": lambda: transformers.Qwen3Config(**SMALL, head_dim=24),
    "mixtral": lambda: transformers.MixtralConfig(**dict(SMALL, intermediate_size=64),
                                                  num_local_experts=4, num_experts_per_tok=2),
    # Every published Qwen2-MoE setting: shared expert with its gate, top-k weights not
    # renormalised (--moe-router-pre-softmax), expert and shared widths of their own, QKV bias.
    "qwen2_moe": lambda: transformers.Qwen2MoeConfig(
        **SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=48, norm_topk_prob=False),
    # head_dim != hidden / heads; small soft-caps and a 4-token window so that each changes
    # the logits of the 8-token inputs.
    "gemma": lambda: transformers.GemmaConfig(**SMALL, head_dim=24),
    "gemma2": lambda: transformers.Gemma2Config(
        **SMALL, head_dim=24, query_pre_attn_scalar=20, sliding_window=4,
        attn_logit_softcapping=0.2, final_logit_softcapping=2.0),
    "bloom": lambda: transformers.BloomConfig(vocab_size=250, hidden_size=64, n_layer=4,
                                              n_head=4),
    # GLM-4-9B-hf: RoPE on half of each head's channels, adjacent pairs, QKV bias, fused
    # [gate; up]; head_dim != hidden / heads, so a dropped --kv-channels would show.
    "glm": lambda: transformers.GlmConfig(**SMALL, head_dim=24, pad_token_id=0, eos_token_id=2),
    # GLM-4-0414: the same with norms on the attention and MLP outputs (--post-norm).
    "glm4": lambda: transformers.Glm4Config(**SMALL, head_dim=24, pad_token_id=0, eos_token_id=2),
}
# config.json keys the saving class writes (from_config leaves architectures unset).
CLASS_WRITTEN = ("architectures", "transformers_version")
# A test case's --model-type-hf, where it is not the case's name.
CASE_FAMILY = {"qwen25_7b": "qwen25"}
# name -> (converter flags, ranks to run on)
LAYOUTS: Dict[str, Tuple[List[str], int]] = {
    "tp1pp1": ([], 2),
    # Padded as Megatron-LM pads by default (the converter's default, ModelLink's, is 1), so
    # the padded rows' zeros and their removal on the way back are checked too.
    "tp2pp1": (["--target-tensor-parallel-size", "2", "--make-vocab-size-divisible-by", "128"], 2),
    "tp1pp2": (["--target-pipeline-parallel-size", "2"], 2),
    "tp2pp2": (["--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2"], 4),
}
EXTRA_LAYOUTS = {
    "llama2": {"pp2_uneven": (["--target-pipeline-parallel-size", "2",
                               "--num-layer-list", "1,3"], 2),
               "pp2_vpp": (["--target-pipeline-parallel-size", "2",
                            "--num-layers-per-virtual-pipeline-stage", "1"], 2)},
    "qwen2_moe": {"ep2": (["--target-expert-parallel-size", "2"], 2)},
    "mixtral": {"ep2": (["--target-expert-parallel-size", "2"], 2),
                "tp2ep2": (["--target-tensor-parallel-size", "2",
                            "--target-expert-parallel-size", "2"], 4)},
}
# Variants of a family checked at every layout already, and the families that only add
# settings to such a layout (InternLM: --add-qkv-bias --add-dense-bias; GLM: ChatGLM3's model
# under transformers' names): TP=2 and PP=2 only.
ONLY_LAYOUTS = {case: ("tp2pp1", "tp1pp2")
                for case in ("llama3", "llama32", "llama33", "yi", "codellama", "qwen25_7b",
                             "aquila", "internlm", "glm", "glm4", "minicpm", "baichuan")} | {
    "qwen2_moe": ("tp2pp1", "tp1pp2", "ep2"),
    # Baichuan-13B: Baichuan2-13B's ALiBi model (checked at every layout) without NormHead.
    "baichuan_13b": ("tp2pp1",)}
CASES = [(family, layout) for family in [*HF_CONFIGS, *REMOTE_FAMILIES]
         for layout in ONLY_LAYOUTS.get(family) or
         list(LAYOUTS) + list(EXTRA_LAYOUTS.get(family, {}))]
TOKENS = torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(7)).tolist()
RUN_FLAGS = ["--finetune", "--micro-batch-size", "1", "--train-iters", "0", "--lr", "0",
             "--mock-data", "--device", "cpu"]


def family_flag(case: str) -> str:
    return CASE_FAMILY.get(case) or model_type_hf(case)


def layout_of(family: str, layout: str) -> Tuple[List[str], int]:
    return {**LAYOUTS, **EXTRA_LAYOUTS.get(family, {})}[layout]


def save_tiny_hf(family: str, directory: Path,
                 config: Optional[transformers.PretrainedConfig] = None) -> torch.nn.Module:
    """The checkpoint of `family` in `directory` (of `config`, or of the family's case here);
    returns the model whose function it holds."""
    torch.manual_seed(0)
    if config is None:
        config = HF_CONFIGS[family]() if family in HF_CONFIGS else \
            REMOTE_FAMILIES[family].reference()
    model = transformers.AutoModelForCausalLM.from_config(config)
    # Random norm weights and biases too, so a swapped one would show in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
            elif param.dim() == 1:
                param.normal_(0.0, 0.1)
    if family in REMOTE_FAMILIES:
        return save_remote(family, model, directory)
    model.save_pretrained(directory)
    return model


def convert(*argv: str) -> List[str]:
    """Run the converter in-process; returns the printed pretrain_gpt.py flags (HF -> MG)."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert convert_main(list(argv)) == 0
    lines = out.getvalue().strip().splitlines()
    return lines[-1].split() if lines and lines[0].startswith("pretrain_gpt.py") else []


def dump_logits(jobs: List[dict], nproc: int, workdir: Path) -> None:
    """One torchrun launch of tools/checkpoint/dump_logits.py for many checkpoints."""
    jobs_file = workdir / f"jobs_{nproc}.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           f"--master-port={_free_port()}", str(ROOT / "tools" / "checkpoint" / "dump_logits.py"),
           str(jobs_file)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def hf_logits(model: transformers.PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


def _selected_cases(request) -> List[Tuple[str, str]]:
    """The cases this session runs (all, or those `-k` picked), so only they are converted."""
    chosen = {(item.callspec.params["family"], item.callspec.params["layout"])
              for item in request.session.items
              if item.module is request.module and "layout" in getattr(
                  getattr(item, "callspec", None), "params", {})}
    return [case for case in CASES if case in chosen]


@pytest.fixture(scope="module")
def converted(request, tmp_path_factory):
    """Convert every (family, layout), then get our model's logits in two torchrun launches."""
    root = tmp_path_factory.mktemp("families")
    reference, jobs = {}, {2: [], 4: []}
    cases = _selected_cases(request)
    for family in dict.fromkeys(family for family, _ in cases):
        hf_dir = root / family / "hf"
        reference[family] = hf_logits(save_tiny_hf(family, hf_dir))
        for family_, layout in cases:
            if family_ != family:
                continue
            flags, nproc = layout_of(family, layout)
            mg_dir = root / family / layout
            model_flags = convert("--load-model-type", "hf", "--save-model-type", "mg",
                                  "--model-type-hf", family_flag(family),
                                  "--load-dir", str(hf_dir),
                                  "--save-dir", str(mg_dir), *flags)
            # Two micro-batches per pipeline stage keep the interleaved schedule's check happy.
            batch = ["--global-batch-size", str(2 * nproc)]
            jobs[nproc].append({"argv": model_flags + ["--load", str(mg_dir)] + RUN_FLAGS + batch,
                                "tokens": TOKENS, "out": str(root / family / f"{layout}.pt")})
    for nproc, batch in jobs.items():
        if batch:
            dump_logits(batch, nproc, root)
    return root, reference


@pytest.mark.parametrize("family,layout", CASES)
def test_logits_match_transformers(converted, family, layout):
    root, reference = converted
    ours = torch.load(root / family / f"{layout}.pt")
    vocab = reference[family].shape[-1]
    assert ours.shape[-1] >= vocab
    assert_logits_close(ours[..., :vocab], reference[family])
    assert (ours[..., vocab:] == 0).all()  # padded rows are zero, so padded logits are too


@pytest.mark.parametrize("family,layout", CASES)
def test_round_trip_is_bit_identical(converted, family, layout, tmp_path):
    root, _ = converted
    convert("--load-model-type", "mg", "--save-model-type", "hf",
            "--model-type-hf", family_flag(family), "--load-dir", str(root / family / layout),
            "--save-dir", str(tmp_path / "hf"), "--max-shard-size", "200KB")
    if family in REMOTE_FAMILIES:
        # No classes to load them with: compare the files, and the whole config.json.
        original, original_config = load_remote(root / family / "hf")
        original = expected_round_trip(family, original)
        back, back_config = load_remote(tmp_path / "hf")
        assert back_config == original_config
    else:
        original = transformers.AutoModelForCausalLM.from_pretrained(
            root / family / "hf").state_dict()
        back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert back.keys() == original.keys()
    for name, tensor in original.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    if family not in REMOTE_FAMILIES:  # theirs was compared whole above
        config = json.loads((tmp_path / "hf" / "config.json").read_text())
        original_config = json.loads((root / family / "hf" / "config.json").read_text())
        # Only what the HF model class itself writes differs (it names itself on export).
        assert {key: value for key, value in config.items() if key not in CLASS_WRITTEN} == \
            {key: value for key, value in original_config.items() if key not in CLASS_WRITTEN}


@pytest.mark.parametrize("case,plain", [
    ("llama31", {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}),
    ("mistral", {"sliding_window": None}),
    ("qwen2_moe", {"norm_topk_prob": True}),
])
def test_carried_setting_changes_the_logits(case, plain):
    """The same weights without LLaMA 3's RoPE scaling, Mistral's window or Qwen2-MoE's
    unnormalised top-k weights give other logits, so the parity cases above (to 1e-5 of the
    logits' scale) would see any of them dropped or mistranslated."""
    config = HF_CONFIGS[case]()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    config = copy.deepcopy(config)  # the model reads its config on every forward
    for key, value in plain.items():
        setattr(config, key, value)
    without = transformers.AutoModelForCausalLM.from_config(config)
    without.load_state_dict(model.state_dict())
    assert (hf_logits(model) - hf_logits(without)).abs().max().item() > 1e-2


def test_normalized_head_round_trip_is_exact(tmp_path):
    """Baichuan2's head comes back normalised; converting that again changes no bit."""
    save_tiny_hf("baichuan2", tmp_path / "hf")
    once, twice = tmp_path / "once", tmp_path / "twice"
    to_hf = ("--load-model-type", "mg", "--save-model-type", "hf", "--model-type-hf", "baichuan2")
    to_mg = ("--load-model-type", "hf", "--save-model-type", "mg", "--model-type-hf", "baichuan2",
             "--target-tensor-parallel-size", "2")
    convert(*to_mg, "--load-dir", str(tmp_path / "hf"), "--save-dir", str(tmp_path / "mg1"))
    convert(*to_hf, "--load-dir", str(tmp_path / "mg1"), "--save-dir", str(once))
    convert(*to_mg, "--load-dir", str(once), "--save-dir", str(tmp_path / "mg"))
    convert(*to_hf, "--load-dir", str(tmp_path / "mg"), "--save-dir", str(twice))
    first, second = load_remote(once)[0], load_remote(twice)[0]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_pytorch_bin_checkpoints_convert(tmp_path):
    """InternLM2 and Baichuan2 publish pytorch_model-*.bin shards; they read like safetensors."""
    save_tiny_hf("internlm2", tmp_path / "safetensors")
    tensors, config = load_remote(tmp_path / "safetensors")
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[:len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    source = tmp_path / "bin"
    source.mkdir()
    for file, part in shards.items():
        torch.save({name: tensors[name] for name in part}, source / file)
    (source / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {name: file for file, part in shards.items() for name in part}}))
    (source / "config.json").write_text(json.dumps(config))
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--model-type-hf", "internlm2",
            "--load-dir", str(source), "--save-dir", str(tmp_path / "mg"),
            "--target-tensor-parallel-size", "2")
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--model-type-hf", "internlm2",
            "--load-dir", str(tmp_path / "mg"), "--save-dir", str(tmp_path / "back"))
    back, back_config = load_remote(tmp_path / "back")
    assert back_config == config and back.keys() == tensors.keys()
    assert all(torch.equal(back[name], tensors[name]) for name in tensors)


@pytest.mark.parametrize("change", [
    {"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 1.0}},
    {"partial_rotary_factor": 1.0},  # where transformers 4.x writes it
    {"attention_bias": False},
])
def test_glm_refuses_what_it_cannot_build(change):
    """GLM's rotary share and QKV bias are fixed flags, so a config.json with others is
    refused rather than converted into a model of another function."""
    config = HF_CONFIGS["glm"]().to_dict()
    with pytest.raises(FamilyConfigError, match=next(iter(change))):
        training_flags(get_family("glm"), {**config, **change})


def test_minicpm_export_needs_its_scales():
    """MiniCPM's config.json always holds its three scales, so a checkpoint trained without one
    is refused rather than exported with a scale its model did not have."""
    flags = preset_flags("minicpm-2b")
    at = flags.index("--scale-depth")
    args = parse_args(flags[:at] + flags[at + 2:] + RUN_FLAGS[1:], world_size=1)
    with pytest.raises(FamilyConfigError, match="trained without --scale-depth"):
        hf_config_from_args(get_family("minicpm"), args, 122753)


@pytest.mark.parametrize("family,vocab,other", [("baichuan2", 64000, "baichuan"),
                                                ("baichuan", 125696, "baichuan2")])
def test_baichuan_generations_are_told_apart_by_vocabulary(family, vocab, other):
    """Baichuan and Baichuan2 share model_type "baichuan"; converting one as the other would add
    or drop the NormHead normalisation, so each refuses the other's published vocabulary."""
    with pytest.raises(FamilyConfigError, match=f"use --model-type-hf {other}$"):
        training_flags(get_family(family), {"model_type": "baichuan", "vocab_size": vocab})

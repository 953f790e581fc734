"""Every family's generate script reproduces transformers' greedy tokens on a converted tiny
model.

For each family of the registry, a tiny random model with the architecture of the family's
smallest published size (its config.json with the shape shrunk, built by transformers' class;
for a trust_remote_code family, the checkpoint and reference forward of
remote_code_families.py with the size's settings) is converted with the flags of the family's
own ckpt_convert_*_hf2mcore.sh, and its generate_*_ptd.sh runs with the converted shape as
MODEL_ARGS: the script's own architecture flags must describe the model. Both scripts run
under stand-ins (`python`, `torchrun`) that record their command lines; the conversions then
run in this process and every recorded inference.py run in one further process
(tests/launch_inference_runs.py), so no family pays for a launch of its own.

The reference decodes greedily over the model's forward (the argmax of the last position, the
whole sequence recomputed each step), which serves the written-out forwards too. The scripts
run in bf16 (or fp16) while the reference runs in fp32, so the prompt is one whose every
greedy step has its best token ahead of the next by a clear margin: a near-tie would make any
two float paths disagree (scaling the head up does not help, as rounding is relative). The
reply must also vary, or a model that repeats one token would prove little.
"""
import contextlib
import dataclasses
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import transformers

import remote_code_families
from conftest import ROOT, _runs_env
from modellink.checkpoint.cli import main as convert_main
from modellink.models.config_dialects import from_llama_keys
from modellink.models.families.base import Family, Size
from modellink.models.families.presets import size_config
from test_convert_families import save_tiny_hf
from test_family_scripts import RECORDER, recorded_argv
from test_inference_generate import VOCAB, word_tokenizer

sys.path.insert(0, str(ROOT / "tools"))
import gen_examples  # noqa: E402

NEW_TOKENS = 8
# config.json values of the published sizes that are widths or counts, and their tiny ones
# (the Size fields are shrunk separately); every other value is architecture and stays.
TINY_EXTRA = {"kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8,
              "qk_nope_head_dim": 8, "v_head_dim": 8, "n_shared_experts": 1,
              "first_k_dense_replace": 1, "seq_length": 128}
# Weight scales tried in turn until a prompt's reply is clear and varied, each with the smallest
# gap it needs between the best and the second logit at every reference step, in units of the
# logits' standard deviation there. Measured on these tiny models, transformers' own bf16
# forward moves no logit by more than 0.06 of it at weight scale 0.1, 0.05 at 0.02 and up to 0.3
# at 0.3 (the worst family). The first two margins are well above their drift; at 0.3 the
# margin is the most MiniCPM's best varied prompt has (0.28), and bf16 on this CPU is
# deterministic, so a flip there would mean a CPU with other bf16 rounding. At transformers' default (0.02) most families' logits mostly follow the current
# token's own embedding, so replies repeat a token and attention or positions hardly matter;
# 5x makes them matter. Gemma 2 and Bloom vary only at the default, MiniCPM (embeddings x 12)
# only at 15x.
INIT_STDS = ((0.1, 0.1), (0.02, 0.1), (0.3, 0.25))
# Distinct tokens a reply needs, so that a repeated token cannot stand for the whole test.
VARIED = NEW_TOKENS // 2


def _smallest(family: Family) -> Tuple[str, Size]:
    return next(iter(family.sizes.items()))


def _tiny_size(size: Size) -> Size:
    """The published size with its shape shrunk, keeping which features it has (GQA, an own
    head width, experts, a shared expert)."""
    def some(value: Optional[int], tiny: int) -> Optional[int]:
        return None if value is None else tiny
    return dataclasses.replace(
        size, layers=2, hidden=64, ffn=128, heads=4, vocab=VOCAB, seq_length=128,
        query_groups=some(size.query_groups, 2), head_dim=some(size.head_dim, 16),
        experts=some(size.experts, 4), topk=some(size.topk, 2), moe_ffn=some(size.moe_ffn, 32),
        shared_ffn=some(size.shared_ffn, 64),
        extra={key: TINY_EXTRA.get(key, value) for key, value in size.extra.items()})


@contextlib.contextmanager
def _published_settings(family: Family, size: Size, init_std: float):
    """The reference model's config with the size's settings and weight scale (and, for
    MiniCPM, its muP scales in place of remote_code_families' tiny ones while the model is
    saved and run); None for a trust_remote_code family without a builder there."""
    settings = family.settings.variant.settings if size.variant else family.settings
    if settings.config_class is not None:
        config = size_config(settings, _tiny_size(size))
        if settings.dialect is not None:
            config = from_llama_keys(settings.dialect, config)
        config.pop("model_type")
        # Token ids of the published vocabulary would fall outside the tiny one: the word
        # tokenizer's instead.
        config.update(pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      initializer_range=init_std)
        yield getattr(transformers, settings.config_class)(**config)
        return
    spec = remote_code_families.REMOTE_FAMILIES.get(family.name)
    if spec is None:
        yield None
        return
    config = spec.reference()
    config.rms_norm_eps = size.norm_eps
    config.rope_parameters = dict(config.rope_parameters, rope_theta=size.rope_theta)
    config.tie_word_embeddings = size.tied
    config.initializer_range = init_std
    with pytest.MonkeyPatch.context() as patch:
        for key, value in size.extra.items():
            if key in remote_code_families.MINICPM_SCALES:
                patch.setitem(remote_code_families.MINICPM_SCALES, key, value)
        yield config


def _clear_prompt(model: torch.nn.Module, margin: float) -> Optional[Tuple[int, List[int]]]:
    """A one-word prompt (EXTRA_ARGS is split on spaces) whose greedy reply has clear margins
    at every step, only plain words (no token the tokenizer would print otherwise or stop at)
    and the most distinct ones, at least VARIED; and that reply. Every word is decoded at
    once, as one batch."""
    ids = torch.arange(3, VOCAB)[:, None]
    margins = torch.full((len(ids),), float("inf"))
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(ids).logits[:, -1]
            top = logits.topk(2).values
            margins = torch.minimum(margins, (top[:, 0] - top[:, 1]) / logits.std(dim=-1))
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
    clear = (margins >= margin) & (ids[:, 1:].min(dim=1).values >= 3)
    distinct = torch.tensor([len(set(reply.tolist())) for reply in ids[:, 1:]]) * clear
    row = int(distinct.argmax())
    return (int(ids[row, 0]), ids[row, 1:].tolist()) if distinct[row] >= VARIED else None


def _save_tiny(name: str, family: Family, size: Size, directory: Path
               ) -> Tuple[int, List[int]]:
    """The tiny model saved in `directory` at the first weight scale that gives a clear,
    varied reply; that prompt and reply."""
    for init_std, margin in INIT_STDS:
        with _published_settings(family, size, init_std) as config:
            if config is None:
                raise AssertionError(f"family {name}: no tiny-model builder (a transformers "
                                     f"config class, or an entry in tests/remote_code_families.py)")
            found = _clear_prompt(save_tiny_hf(name, directory, config).eval(), margin)
        if found is not None:
            return found
    raise AssertionError(f"family {name}: no prompt with {VARIED} distinct tokens and clear "
                         f"greedy margins at (weight scale, margin) {INIT_STDS}")


def _convert(argv: List[str]) -> List[str]:
    """The converter run in this process; the model flags it prints."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
        assert convert_main(argv) == 0, text.getvalue()[-2000:]
    return [token for token in text.getvalue().strip().splitlines()[-1].split()
            if not token.endswith(".py")]


def _prepare(name: str, root: Path, env: Dict[str, str], tokenizer: str) -> dict:
    """Tiny model, conversion and the recorded generate run of one family."""
    family = gen_examples.FAMILIES[name]
    size_name, size = _smallest(family)
    script = gen_examples.Script(family, size_name, size)
    directory = root / name
    prompt, expected = _save_tiny(name, family, size, directory / "hf")
    env = dict(env, TP="1", PP="1", EP="1", LOAD_DIR=str(directory / "hf"),
               SAVE_DIR=str(directory / "mg"))
    convert_argv = recorded_argv(
        ROOT / "examples" / name / f"ckpt_convert_{script.name}_hf2mcore.sh", env)
    flags = _convert(convert_argv[1:])
    shape = [token for group in gen_examples._split(flags)[0] for token in group]
    env.update(GPUS_PER_NODE="1", CHECKPOINT=str(directory / "mg"), TOKENIZER_PATH=tokenizer,
               MODEL_ARGS=" ".join(shape + ["--seq-length", "64"]),
               EXTRA_ARGS=f"--device cpu --task greedy --max-new-tokens {NEW_TOKENS} "
                          f"--max-length 64 --prompt w{prompt}")
    argv = recorded_argv(ROOT / "examples" / name / f"generate_{script.name}_ptd.sh", env)
    entry = next(i for i, token in enumerate(argv) if token.endswith("inference.py"))
    assert argv[:2] == ["--nproc_per_node", "1"], argv[:entry]
    return {"args": argv[entry + 1:], "out": str(directory / "generate.txt"),
            "expected": expected, "flags": flags}


def _selected(request) -> List[str]:
    """The families this session tests (all, or those `-k` picked), so only they are built."""
    return [item.callspec.params["family"] for item in request.session.items
            if item.module is request.module and hasattr(item, "callspec")]


@pytest.fixture(scope="module")
def generated(request, tmp_path_factory) -> Dict[str, dict]:
    """Each family prepared (or the reason it could not be), then all generate runs in one
    process."""
    root = tmp_path_factory.mktemp("family_generate")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for stand_in in ("torchrun", "python"):
        (bin_dir / stand_in).write_text(RECORDER)
        (bin_dir / stand_in).chmod(0o755)
    env = dict(os.environ, RECORDED=str(root / "argv"), DISTRIBUTED_BACKEND="gloo",
               PATH=f"{bin_dir}:{os.environ['PATH']}")
    tokenizer = word_tokenizer(root / "tokenizer")
    runs: Dict[str, dict] = {}
    for name in _selected(request):
        try:
            runs[name] = _prepare(name, root, env, tokenizer)
        except Exception:  # reported by the family's own test
            runs[name] = {"error": traceback.format_exc()}
    ready = [run for run in runs.values() if "args" in run]
    launch = {key: value for key, value in _runs_env(
        [{"args": run["args"], "out": run["out"]} for run in ready]).items()
        if key not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "launch_inference_runs.py")],
                            env=launch, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return runs


def _disagreements(flags: List[str], argv: List[str]) -> List[str]:
    """The converter's model flags that the script's command line leaves out or sets
    otherwise (its last value counts), to say why tokens differ."""
    groups = gen_examples._split(flags)[1]
    last: Dict[str, List[str]] = {}
    for token in argv:  # argv starts with a flag
        if token.startswith("--"):
            flag = token
            last[flag] = []
        else:
            last[flag].append(token)
    return [" ".join(group) for group in groups
            if "-parallel-size" not in group[0] and last.get(group[0]) != group[1:]]


@pytest.mark.parametrize("family", list(gen_examples.FAMILIES))
def test_generate_script_reproduces_transformers_greedy(generated, family):
    run = generated[family]
    assert "error" not in run, run["error"]
    output = Path(run["out"]).read_text()
    assert "ModelLink:\n" in output, output[-3000:]
    reply = output.split("ModelLink:\n", 1)[1].strip().splitlines()[0]
    expected = " ".join(f"w{token}" for token in run["expected"])
    assert reply == expected, (f"script flags differing from the checkpoint's: "
                               f"{_disagreements(run['flags'], run['args'])}")

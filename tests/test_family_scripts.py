"""The generated example scripts (tools/gen_examples.py): committed ones are current, the
pretrain and fine-tune scripts of several families train shrunk on two CPU ranks, and a
generate script reproduces transformers' greedy tokens.

The shrunk runs share one torchrun job: each script runs under a stand-in `torchrun` that
records its command line, and tests/launch_pretrain_runs.py then runs every recorded
`pretrain_gpt.py` argument list in one launch, so the flags tested are the scripts' own.
"""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy
import pytest
import torch
import transformers
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import ROOT, _free_port, run_in_one_job
from data_helpers import demo, preprocess  # noqa: F401
from test_inference_generate import VOCAB, convert, hf_generate, word_tokenizer

sys.path.insert(0, str(ROOT / "tools"))
import gen_examples  # noqa: E402

# A size's shape flags shrunk; a shape flag missing here fails the test rather than running
# the published size on CPU.
TINY = {"--num-layers": "2", "--hidden-size": "64", "--ffn-hidden-size": "128",
        "--num-attention-heads": "4", "--num-query-groups": "2", "--kv-channels": "16",
        "--seq-length": "128", "--max-position-embeddings": "128", "--padded-vocab-size": "512",
        "--num-experts": "4", "--moe-router-topk": "2", "--moe-ffn-hidden-size": "32",
        "--moe-shared-expert-intermediate-size": "64", "--moe-intermediate-size": "32",
        "--n-shared-experts": "1", "--first-k-dense-replace": "1", "--kv-lora-rank": "16",
        "--qk-rope-head-dim": "8", "--qk-nope-head-dim": "8", "--v-head-dim": "8"}


def _generated_pretrain_size(name: str) -> Optional[str]:
    """A family's first (smallest) size whose pretrain script is generated."""
    family = gen_examples.FAMILIES[name]
    for size, spec in family.sizes.items():
        script = gen_examples.Script(family, size, spec)
        if f"examples/{name}/pretrain_{script.name}_ptd.sh" not in gen_examples.HAND_WRITTEN:
            return size
    return None


# Pretrain saves the checkpoint the family's tune scripts then start from. Mixtral's only
# pretrain script is hand-written; tests/test_example_scripts.py runs it.
SHRUNK = [(name, size, ("pretrain", "tune_full", "tune_lora") if name == "qwen3"
           else ("pretrain", "tune_full"))
          for name in gen_examples.FAMILIES
          for size in [_generated_pretrain_size(name)] if size is not None]
# Stands in for torchrun: appends its command line to $RECORDED.
RECORDER = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["RECORDED"], "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_committed_files_are_current():
    files = gen_examples.render()
    assert gen_examples.stale(files) == []
    for name, family in gen_examples.FAMILIES.items():  # a new family is picked up
        for size in family.sizes:
            assert f"examples/{name}/ckpt_convert_{name}_{size.replace('.', 'p')}_hf2mcore.sh" \
                in files


def _shrunk_model_args(script: "gen_examples.Script") -> str:
    return " ".join(group[0] if len(group) == 1 else f"{group[0]} {TINY[group[0]]}"
                    for group in script.shape)


def _pretrain_data(tmp_path: Path) -> str:
    prefix = str(tmp_path / "text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    rng = numpy.random.default_rng(1)
    for _ in range(40):
        builder.add_document(rng.integers(3, 64, size=40, dtype=numpy.int32), [40])
    builder.finalize(prefix + ".idx")
    return prefix


def _record(script: Path, env: Dict[str, str]) -> List[str]:
    """The `pretrain_gpt.py` arguments the script launches (checked to be two ranks)."""
    recorded = Path(env["RECORDED"])
    recorded.unlink(missing_ok=True)
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    argv = json.loads(recorded.read_text())
    entry = next(i for i, token in enumerate(argv) if token.endswith("pretrain_gpt.py"))
    assert argv[:2] == ["--nproc_per_node", "2"], argv[:entry]
    return argv[entry + 1:]


def test_scripts_train_shrunk_on_two_cpu_ranks(tmp_path, demo):  # noqa: F811
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(RECORDER)
    (bin_dir / "torchrun").chmod(0o755)
    text = _pretrain_data(tmp_path)
    runs, saves = [], []
    for family, size, kinds in SHRUNK:
        script = gen_examples.Script(gen_examples.FAMILIES[family], size,
                                     gen_examples.FAMILIES[family].sizes[size])
        instruction = preprocess(
            demo["instruction"], tmp_path / f"{family}_alpaca", demo["tokenizer"],
            "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type",
            script.family.template, "--append-eod", "--pack", "--seq-length", "128")
        pretrained = tmp_path / f"{family}_pretrain"
        for kind in kinds:
            save = tmp_path / f"{family}_{kind}"
            env = dict(
                os.environ, GPUS_PER_NODE="2",
                TP="2" if script.size.layout.tp > 1 and not script.moe else "1",
                PP="1", EP="2", DISTRIBUTED_BACKEND="gloo", RECORDED=str(tmp_path / "argv"),
                PATH=f"{bin_dir}:{os.environ['PATH']}", TOKENIZER_PATH=demo["tokenizer"],
                DATA_PATH=text if kind == "pretrain" else instruction[0].rsplit("_packed", 1)[0],
                CKPT_LOAD_DIR=str(pretrained), CKPT_SAVE_DIR=str(save),
                LOG_DIR=str(tmp_path / "logs"), MODEL_ARGS=_shrunk_model_args(script),
                EXTRA_ARGS="--device cpu --train-iters 2 --save-interval 2 "
                           "--micro-batch-size 1 --global-batch-size 2")
            file = {"pretrain": f"pretrain_{script.name}_ptd.sh",
                    "tune_full": f"tune_{script.name}_full_ptd.sh",
                    "tune_lora": f"tune_{script.name}_lora_ptd.sh"}[kind]
            path = ROOT / "examples" / family / file
            runs.append({"args": _record(path, env), "history": None})
            saves.append(save)
    result = run_in_one_job(runs, 2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for save in saves:
        assert (save / "latest_checkpointed_iteration.txt").read_text() == "2", save
    adapters = torch.load(tmp_path / "qwen3_tune_lora" / "iter_0000002" / "mp_rank_00" /
                          "model_optim_rng.pt", map_location="cpu", weights_only=False)["model"]
    assert adapters and all("lora" in key for key in adapters)


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory):
    """A tiny random Qwen3 converted to Megatron, with a word-level tokenizer."""
    root = tmp_path_factory.mktemp("qwen3")
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=128, bos_token_id=1, eos_token_id=2, rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=True)).eval()  # Qwen3-0.6B's, as its script
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # the next token clearly ahead: no near-ties
    model.save_pretrained(root / "hf")
    flags = convert(root / "hf", root / "mg", "--model-type-hf", "qwen3")
    return model, root / "mg", flags, word_tokenizer(root / "tokenizer")


def test_generate_script_matches_transformers_greedy(tiny_qwen3, tmp_path):
    model, checkpoint, flags, tokenizer = tiny_qwen3
    shape = [token for group in gen_examples._split(flags)[0] for token in group]
    prompt = "w17"  # one word: EXTRA_ARGS is split on spaces
    ids = transformers.AutoTokenizer.from_pretrained(tokenizer)(prompt)["input_ids"]
    env = dict(
        os.environ, GPUS_PER_NODE="1", TP="1", PP="1", MASTER_PORT=str(_free_port()),
        DISTRIBUTED_BACKEND="gloo", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
        MODELLINK_CPU_THREADS="1", CHECKPOINT=str(checkpoint), TOKENIZER_PATH=tokenizer,
        MODEL_ARGS=shlex.join(shape + ["--seq-length", "64"]),
        EXTRA_ARGS=f"--device cpu --task greedy --max-new-tokens 6 --max-length 64 "
                   f"--prompt {prompt}",
        PATH=f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}")
    result = subprocess.run(["bash", str(ROOT / "examples/qwen3/generate_qwen3_0p6b_ptd.sh")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reply = result.stdout.split("ModelLink:\n", 1)[1].strip().splitlines()[0]
    expected = hf_generate(model, ids, max_new_tokens=6)
    assert reply == " ".join(f"w{token}" for token in expected), result.stdout[-2000:]

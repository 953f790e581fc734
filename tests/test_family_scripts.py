"""The generated example scripts (tools/gen_examples.py): committed ones are current, and
every family's pretrain and fine-tune scripts train shrunk on two CPU ranks (its generate
script: tests/test_family_generate.py).

The shrunk runs share one torchrun job: each script runs under a stand-in `torchrun` that
records its command line, and tests/launch_pretrain_runs.py then runs every recorded
`pretrain_gpt.py` argument list in one launch, so the flags tested are the scripts' own.
"""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import ROOT, run_in_one_job
from data_helpers import demo, preprocess  # noqa: F401
from test_example_scripts import _tiny_sentencepiece

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


def _pretrain_size(name: str) -> str:
    """A family's first (smallest) size whose pretrain script is generated, else its first
    size (Mixtral's only pretrain script is hand-written)."""
    family = gen_examples.FAMILIES[name]
    for size, spec in family.sizes.items():
        if _pretrain_script(gen_examples.Script(family, size, spec)) not in \
                gen_examples.HAND_WRITTEN:
            return size
    return next(iter(family.sizes))


def _pretrain_script(script: "gen_examples.Script") -> str:
    return f"examples/{script.family.name}/pretrain_{script.name}_ptd.sh"


# Pretrain saves the checkpoint the family's tune scripts then start from.
SHRUNK = [(name, _pretrain_size(name), ("pretrain", "tune_full", "tune_lora")
           if name in gen_examples.LORA_TESTED else ("pretrain", "tune_full"))
          for name in gen_examples.FAMILIES]
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


def recorded_argv(script: Path, env: Dict[str, str]) -> List[str]:
    """The command line the script hands the stand-in torchrun (RECORDER) in env's PATH."""
    recorded = Path(env["RECORDED"])
    recorded.unlink(missing_ok=True)
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(recorded.read_text())


def _record(script: Path, env: Dict[str, str]) -> List[str]:
    """The `pretrain_gpt.py` arguments the script launches (checked to be two ranks)."""
    argv = recorded_argv(script, env)
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
            if kind == "pretrain" and _pretrain_script(script) in gen_examples.HAND_WRITTEN:
                # Written before the families: a SentencePiece tokenizer, and shape flags
                # outside MODEL_ARGS too, which the shrunk ones then override from EXTRA_ARGS.
                env.update(TOKENIZER_MODEL=_tiny_sentencepiece(tmp_path),
                           EXTRA_ARGS=f"{env['EXTRA_ARGS']} {env['MODEL_ARGS']}")
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
    for family in gen_examples.LORA_TESTED:  # only the adapters are saved, on every rank
        shards = sorted((tmp_path / f"{family}_tune_lora" / "iter_0000002").glob(
            "mp_rank_*/model_optim_rng.pt"))
        assert shards, family
        for shard in shards:
            adapters = torch.load(shard, map_location="cpu", weights_only=False)["model"]
            assert adapters and all("lora" in key for key in adapters), shard

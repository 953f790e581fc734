"""Writes examples/<family>/*.sh and docs/models.md from the family data.

The scripts of every published size (modellink/models/families/<family>.py `sizes`) are
rendered from that size's preset flags and layout, so a script cannot disagree with the
converter or the planner; `--check` fails when a committed file differs from what this would
write (tests/test_family_scripts.py runs it). A family added to the registry gets its scripts
and its models.md rows the next time this runs.

    python tools/gen_examples.py            # write the files
    python tools/gen_examples.py --check    # exit 1, naming the stale files, if any differ
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modellink.argument_errors import ArgumentError  # noqa: E402
from modellink.arguments import parse_args  # noqa: E402
from modellink.models.families import FAMILIES, Family, Size, preset_flags  # noqa: E402
from modellink.plan.cli import with_padded_vocab  # noqa: E402
from modellink.plan.memory import estimate  # noqa: E402
from modellink.plan.params import stage_params  # noqa: E402

# Written by hand before the generator and kept as they are (their own tests run them).
HAND_WRITTEN = frozenset({
    "examples/llama2/pretrain_llama2_7b_ptd.sh", "examples/llama2/tune_llama2_7b_full_ptd.sh",
    "examples/llama2/tune_llama2_7b_lora_ptd.sh", "examples/llama2/generate_llama2_7b_ptd.sh",
    "examples/llama2/chat_llama2_7b_ptd.sh", "examples/llama2/evaluate_llama2_7b_ptd.sh",
    "examples/mixtral/pretrain_mixtral_8x7b_ptd.sh",
})
# Flags whose values are a size's numbers: the scripts' MODEL_ARGS, which a shrunk run
# replaces whole. Every other preset flag is the family's architecture and stays.
SHAPE_FLAGS = frozenset({
    "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads",
    "--group-query-attention", "--num-query-groups", "--kv-channels", "--seq-length",
    "--max-position-embeddings", "--padded-vocab-size", "--num-experts", "--moe-router-topk",
    "--moe-ffn-hidden-size", "--moe-shared-expert-intermediate-size", "--moe-intermediate-size",
    "--n-shared-experts", "--first-k-dense-replace", "--kv-lora-rank", "--q-lora-rank",
    "--qk-rope-head-dim", "--qk-nope-head-dim", "--v-head-dim", "--n-group", "--topk-group",
})
# Training sequence length: ModelLink's scripts train at 4k even where the model reads more.
TRAIN_SEQ = 4096
DEVICE_MEMORY = 64e9
DEVICES = 8
# The tests that run each family's scripts shrunk, and its generate script.
SCRIPT_TESTS = "tests/test_family_scripts.py"
GENERATE_TESTS = "tests/test_family_generate.py"
# The families whose LoRA script SCRIPT_TESTS also runs: one for each kind of target list
# tune_lora writes (dense, MoE, multi-head latent attention).
LORA_TESTED = ("qwen3", "mixtral", "deepseek2")
CONVERT_TESTS = "tests/test_convert_families.py"


def _split(flags: List[str]) -> "tuple[List[List[str]], List[List[str]]]":
    """Preset flags as (shape, architecture) lists of [flag, value...] groups."""
    groups: List[List[str]] = []
    for token in flags:
        if token.startswith("--"):
            groups.append([token])
        else:
            groups[-1].append(token)
    shape = [g for g in groups if g[0] in SHAPE_FLAGS]
    return shape, [g for g in groups if g[0] not in SHAPE_FLAGS]


def _comment(text: str) -> str:
    """`text` as bash comment lines of at most 100 columns."""
    return "".join(f"# {line}\n" for paragraph in text.split("\n")
                   for line in textwrap.wrap(paragraph, 98))


def _block(groups: Sequence[Sequence[str]], indent: str = "    ") -> str:
    return " \\\n".join(indent + " ".join(g) for g in groups)


class Script:
    """The text of one family size's scripts."""

    def __init__(self, family: Family, size_name: str, size: Size) -> None:
        self.family, self.size_name, self.size = family, size_name, size
        self.name = f"{family.name}_{size_name.replace('.', 'p')}"
        self.title = f"{family.name}-{size_name}"
        self.template = size.template or family.template
        flags = preset_flags(self.title)
        shape, self.arch = _split(flags)
        # The context the model was trained at, where its config.json says (Qwen-1's
        # seq_length), else its positions.
        self.shape = [["--seq-length", str(min(int(g[1]), TRAIN_SEQ))]
                      if g[0] == "--seq-length" else g
                      for g in shape] + [["--padded-vocab-size", str(size.vocab)]]
        layout = size.layout
        self.nodes = max(1, layout.devices // DEVICES) if layout.devices > DEVICES else 1
        self.moe = family.settings.moe
        self.recompute = layout.recompute
        self.recompute_added = False
        self.peak: Optional[float] = None
        self.params: Optional[float] = None
        self.not_planned: Optional[str] = None

    def plan(self) -> None:
        """The planner's peak and parameter count of the scripts as written, adding full
        recomputation where the family's layout alone would not fit a 64 GB device (the
        layout's numbers stay the family's); a family the planner does not model yet keeps
        its layout and the planner's reason in `not_planned`."""
        try:
            self.peak = estimate(plan_args(self)).peak
            if self.recompute is None and self.peak > DEVICE_MEMORY:
                self.recompute, self.recompute_added = "full", True
                self.peak = estimate(plan_args(self)).peak
            total = stage_params(plan_args(self, whole=True), 0)
            self.params = total.dense + total.experts
        except ArgumentError as error:
            self.not_planned = str(error)

    # -- shared parts -----------------------------------------------------------------------

    def _head(self, what: str, layout_note: str) -> str:
        return "#!/bin/bash\n" + _comment(
            f"{self.title} {what} {layout_note}\n"
            "Generated by tools/gen_examples.py from modellink/models/families/"
            f"{self.family.name}.py; edit the family, not this file.\n"
            "Every variable below can be overridden from the environment; MODEL_ARGS replaces "
            "the model size and EXTRA_ARGS is appended (the test suite runs this script on two "
            "CPU ranks that way).")

    def _layout_note(self) -> str:
        layout = self.size.layout
        ep = f", EP={layout.ep}" if self.moe else ""
        return (f"on {self.nodes} node(s) of {DEVICES} devices (TP={layout.tp}, PP={layout.pp}"
                f"{ep}), sized for {DEVICES} x 64 GB (docs/models.md).")

    def _dist_vars(self, gpus: int = DEVICES) -> str:
        return (f"GPUS_PER_NODE=${{GPUS_PER_NODE:-{gpus}}}\n"
                "MASTER_ADDR=${MASTER_ADDR:-localhost}\n"
                "MASTER_PORT=${MASTER_PORT:-6000}\n"
                f"NNODES=${{NNODES:-{self.nodes}}}\nNODE_RANK=${{NODE_RANK:-0}}\n")

    def _parallel_vars(self, tp: int, pp: int) -> str:
        text = f"TP=${{TP:-{tp}}}\nPP=${{PP:-{pp}}}\n"
        if self.moe:
            text += f"EP=${{EP:-{self.size.layout.ep}}}\n"
        return text + "DISTRIBUTED_BACKEND=${DISTRIBUTED_BACKEND:-nccl}\n"

    def _dist_and_model(self) -> str:
        return ('\nDISTRIBUTED_ARGS="\n    --nproc_per_node $GPUS_PER_NODE \\\n'
                "    --nnodes $NNODES \\\n    --node_rank $NODE_RANK \\\n"
                '    --master_addr $MASTER_ADDR \\\n    --master_port $MASTER_PORT\n"\n\n'
                f'MODEL_ARGS=${{MODEL_ARGS:-"\n{_block(self.shape)}\n"}}\n')

    def _parallel_flags(self) -> List[List[str]]:
        groups = [["--tensor-model-parallel-size", "${TP}"],
                  ["--pipeline-model-parallel-size", "${PP}"]]
        if self.moe:
            groups.append(["--expert-model-parallel-size", "${EP}"])
        return groups

    def _arch(self) -> List[List[str]]:
        return self.arch + [["--make-vocab-size-divisible-by", "1"]]

    # -- training ---------------------------------------------------------------------------

    def train_flags(self) -> List[List[str]]:
        layout = self.size.layout
        memory = [[f] for f in ("--use-distributed-optimizer", "--overlap-grad-reduce")]
        if layout.tp > 1:
            memory.append(["--sequence-parallel"])
        if self.recompute == "full":
            memory += [["--recompute-granularity", "full"], ["--recompute-method", "uniform"],
                       ["--recompute-num-layers", "1"]]
        elif self.recompute == "selective":
            memory.append(["--recompute-granularity", "selective"])
        # The family's own routing (DeepSeek-V2's group_limited_greedy) balances with aux_loss.
        routed = any(g[0] == "--moe-router-load-balancing-type" for g in self.arch)
        moe = ([["--moe-router-load-balancing-type", "aux_loss"]] * (not routed)
               + [["--moe-aux-loss-coeff", "0.02"], ["--moe-token-dispatcher-type", "allgather"]]
               if self.moe else [])
        return (self._parallel_flags() + [["${MODEL_ARGS}"]] + self._arch() + moe + [
            ["--tokenizer-type", "PretrainedFromHF"],
            ["--tokenizer-name-or-path", "${TOKENIZER_PATH}"],
            ["--micro-batch-size", str(layout.micro_batch)],
            ["--global-batch-size", str(layout.global_batch)]] + memory + [
            ["--lr", "1.25e-6"], ["--min-lr", "1.25e-7"], ["--lr-decay-style", "cosine"],
            ["--lr-warmup-fraction", "0.01"], ["--weight-decay", "1e-1"], ["--clip-grad", "1.0"],
            ["--adam-beta1", "0.9"], ["--adam-beta2", "0.95"], ["--init-method-std", "0.01"],
            ["--initial-loss-scale", "65536"], ["--no-masked-softmax-fusion"],
            ["--attention-softmax-in-fp32"], ["--no-gradient-accumulation-fusion"],
            ["--no-load-optim"], ["--no-load-rng"], ["--seed", "42"], ["--bf16"]])

    def _train(self, kind: str, what: str, ckpt_save: str, data: str, iters: int,
               finetune: bool) -> str:
        layout = self.size.layout
        log = f"{kind}_{self.name}"
        text = self._head(what, self._layout_note()) + (
            "set -o pipefail  # the run's exit status, not tee's\n"
            "export CUDA_DEVICE_MAX_CONNECTIONS=1\n\n" + self._dist_vars() + "\n"
            f'CKPT_SAVE_DIR=${{CKPT_SAVE_DIR:-"./ckpt/{self.title}{ckpt_save}"}}\n'
            f'CKPT_LOAD_DIR=${{CKPT_LOAD_DIR:-"./model_weights/{self.title}-mcore"}}\n'
            f'DATA_PATH=${{DATA_PATH:-"{data}"}}\n'
            f'TOKENIZER_PATH=${{TOKENIZER_PATH:-"./model_from_hf/{self.title}-hf/"}}\n')
        if finetune:
            text += f"PROMPT_TYPE=${{PROMPT_TYPE:-{self.template}}}\n"
        text += ('LOG_DIR=${LOG_DIR:-"./logs"}\n'
                 f"LOG_NAME=${{LOG_NAME:-{log}}}\n"
                 + self._parallel_vars(layout.tp, layout.pp) + self._dist_and_model()
                 + f'\nGPT_ARGS="\n    --use-mcore-models \\\n{_block(self.train_flags())}\n"\n'
                 '\nDATA_ARGS="\n    --data-path $DATA_PATH \\\n    --split 100,0,0\n"\n')
        if finetune:
            text += ('\nFINETUNE_ARGS="\n    --finetune \\\n    --is-instruction-dataset \\\n'
                     "    --variable-seq-lengths \\\n    --prompt-type ${PROMPT_TYPE}\n\"\n")
        text += (f'\nOUTPUT_ARGS="\n    --train-iters {iters} \\\n    --log-interval 1 \\\n'
                 f"    --save-interval {iters} \\\n    --eval-interval {iters} \\\n"
                 '    --eval-iters 0\n"\n\n'
                 'SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)\n'
                 'mkdir -p "$LOG_DIR"\n'
                 'torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../pretrain_gpt.py" \\\n'
                 "    $GPT_ARGS \\\n    $DATA_ARGS \\\n"
                 + ("    $FINETUNE_ARGS \\\n" if finetune else "")
                 + "    $OUTPUT_ARGS \\\n    --distributed-backend ${DISTRIBUTED_BACKEND} \\\n"
                 "    --load $CKPT_LOAD_DIR \\\n    --save $CKPT_SAVE_DIR \\\n"
                 '    ${EXTRA_ARGS:-} \\\n    | tee "$LOG_DIR/$LOG_NAME.log"\n')
        return text

    def pretrain(self) -> str:
        return self._train("pretrain", "pretraining", "",
                           f"./dataset/{self.title}/alpaca_text_document", 2000, False)

    def tune_full(self) -> str:
        return self._train("tune", "full-parameter fine-tuning from a converted checkpoint "
                           "(ckpt_convert_*_hf2mcore.sh) on an instruction dataset "
                           "(data_convert_*_instruction.sh),", "-sft",
                           f"./finetune_dataset/{self.title}/alpaca", 2000, True)

    def tune_lora(self) -> str:
        # LoRA does not reach MoE expert layers nor multi-head latent attention's low-rank
        # projections (modellink/training/lora_args.py refuses them).
        if "--multi-head-latent-attention" in self.family.settings.fixed_flags:
            targets, where = "linear_proj", "the attention output projection"
        elif self.moe:
            targets, where = "linear_qkv linear_proj", "every attention linear"
        else:
            targets, where = ("linear_qkv linear_proj linear_fc1 linear_fc2",
                              "every attention and MLP linear")
        return ("#!/bin/bash\n" + _comment(
                    f"{self.title} LoRA fine-tuning: the converted base model stays frozen in "
                    f"CKPT_LOAD_DIR; adapters on {where} are trained and "
                    "saved, alone, to CKPT_SAVE_DIR (LORA_LOAD_DIR continues from saved ones). "
                    "The run is the full fine-tuning script's (same variables, MODEL_ARGS and "
                    f"EXTRA_ARGS; see tune_{self.name}_full_ptd.sh) with the LoRA flags added, "
                    "so the two cannot drift.\n"
                    "Generated by tools/gen_examples.py; edit the family, not this file.") +
                f'export CKPT_SAVE_DIR=${{CKPT_SAVE_DIR:-"./ckpt/{self.title}-lora"}}\n'
                f"export LOG_NAME=${{LOG_NAME:-tune_{self.name}_lora}}\n"
                "LORA_LOAD_DIR=${LORA_LOAD_DIR:-}\nLORA_R=${LORA_R:-16}\n"
                "LORA_ALPHA=${LORA_ALPHA:-32}\n\n"
                f'LORA_ARGS="--lora-target-modules {targets} \\\n'
                "    --lora-r ${LORA_R} --lora-alpha ${LORA_ALPHA} "
                '${LORA_LOAD_DIR:+--lora-load $LORA_LOAD_DIR}"\n\n'
                'SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)\n'
                f'EXTRA_ARGS="$LORA_ARGS ${{EXTRA_ARGS:-}}" exec bash '
                f'"$SCRIPT_DIR/tune_{self.name}_full_ptd.sh"\n')

    # -- inference ----------------------------------------------------------------------------

    def _inference(self, what: str, entry: str, own: List[List[str]],
                   extra_vars: str = "") -> str:
        # The training layout: the checkpoint ckpt_convert_*_hf2mcore.sh writes loads as is.
        tp, pp = self.size.layout.tp, self.size.layout.pp
        parallel = self._parallel_flags()
        groups = own + parallel + [["${MODEL_ARGS}"]] + self._arch() + [
            ["--load", '"${CHECKPOINT}"'], ["--tokenizer-type", "PretrainedFromHF"],
            ["--tokenizer-name-or-path", '"${TOKENIZER_PATH}"'], ["--micro-batch-size", "1"],
            ["--bf16"], ["--no-load-optim"], ["--no-load-rng"], ["--exit-on-missing-checkpoint"],
            ["--seed", "42"], ["--distributed-backend", "${DISTRIBUTED_BACKEND}"],
            ["${EXTRA_ARGS:-}"]]
        ep = f", EP={self.size.layout.ep}" if self.moe else ""
        return (self._head(what, f"on {min(DEVICES, self.size.layout.devices)} devices per node of "
                           f"{self.nodes} node(s) (TP={tp}, "
                           f"PP={pp}{ep}), from a converted checkpoint "
                           "(ckpt_convert_*_hf2mcore.sh).")
                # One model replica: generation has no data parallelism to fill 8 devices with.
                + "export CUDA_DEVICE_MAX_CONNECTIONS=1\n\n"
                + self._dist_vars(min(DEVICES, self.size.layout.devices)) + "\n"
                f'CHECKPOINT=${{CHECKPOINT:-"./model_weights/{self.title}-mcore"}}\n'
                f'TOKENIZER_PATH=${{TOKENIZER_PATH:-"./model_from_hf/{self.title}-hf/"}}\n'
                + extra_vars + self._parallel_vars(tp, pp) + self._dist_and_model() + "\n"
                'SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)\n'
                f'torchrun $DISTRIBUTED_ARGS "$SCRIPT_DIR/../../{entry}" \\\n'
                "    --use-mcore-models \\\n" + _block(groups) + "\n")

    def generate(self) -> str:
        return self._inference("generation (greedy, sampling, beam search and "
                               "log-probs tasks)", "inference.py",
                               [["--max-new-tokens", "256"], ["--max-length", "4096"],
                                ["--use-kv-cache"]])

    def chat(self) -> str:
        return self._inference(f"chat in the {self.template} prompt format "
                               '(type "clear" to forget the history, "exit" to quit)',
                               "inference.py",
                               [["--task", "chat"], ["--prompt-type", self.template],
                                ["--history-turns", "3"], ["--top-p", "0.9"],
                                ["--temperature", "1"], ["--max-new-tokens", "256"],
                                ["--max-length", "4096"], ["--use-kv-cache"]])

    def evaluate(self) -> str:
        return self._inference(
            "benchmark evaluation; TASK and DATA_PATH choose it (mmlu ./mmlu/data/"
            "test/, ceval, gsm8k, boolq, bbh, agieval, human_eval)", "evaluation.py",
            [["--task", "${TASK}"], ["--task-data-path", "${DATA_PATH}"],
             ["--max-new-tokens", "1"], ["--max-length", "4096"]],
            'TASK=${TASK:-mmlu}\nDATA_PATH=${DATA_PATH:-"./mmlu/data/test/"}\n')

    # -- conversion -----------------------------------------------------------------------------

    def _convert(self, direction: str) -> str:
        layout = self.size.layout
        hf = f"./model_from_hf/{self.title}-hf/"
        mcore = f"./model_weights/{self.title}-mcore/"
        if direction == "hf2mcore":
            what = (f"Hugging Face -> Megatron-mcore, split for the training layout (TP={layout.tp}"
                    f", PP={layout.pp}{f', EP={layout.ep}' if self.moe else ''}).")
            io = [["--load-model-type", "hf"], ["--save-model-type", "mg"],
                  ["--target-tensor-parallel-size", "${TP}"],
                  ["--target-pipeline-parallel-size", "${PP}"]]
            if self.moe:
                io.append(["--target-expert-parallel-size", "${EP}"])
            io += [["--load-dir", "${LOAD_DIR}"], ["--save-dir", "${SAVE_DIR}"]]
            dirs = f'LOAD_DIR=${{LOAD_DIR:-"{hf}"}}\nSAVE_DIR=${{SAVE_DIR:-"{mcore}"}}\n'
            parallel = f"TP=${{TP:-{layout.tp}}}\nPP=${{PP:-{layout.pp}}}\n" + (
                f"EP=${{EP:-{layout.ep}}}\n" if self.moe else "")
        else:
            what = ("Megatron-mcore -> Hugging Face: the checkpoint, any layout, merged into "
                    "safetensors beside the config.json and tokenizer of SAVE_DIR (the "
                    "original model's folder).")
            io = [["--load-model-type", "mg"], ["--save-model-type", "hf"],
                  ["--load-dir", "${LOAD_DIR}"], ["--save-dir", "${SAVE_DIR}"]]
            dirs = (f'LOAD_DIR=${{LOAD_DIR:-"{mcore}"}}\n'
                    f'SAVE_DIR=${{SAVE_DIR:-"{hf}"}}\n')
            parallel = ""
        return ("#!/bin/bash\n" + _comment(
                    f"{self.title} checkpoint conversion, {what}\n"
                    "Generated by tools/gen_examples.py; edit the family, not this file.")
                + dirs + parallel + "\n"
                'SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)\n'
                'python "$SCRIPT_DIR/../../tools/checkpoint/convert_ckpt.py" \\\n'
                + _block([["--use-mcore-models"], ["--model-type", "GPT"],
                          ["--model-type-hf", self.family.name]] + io
                         + [["${EXTRA_ARGS:-}"]]) + "\n")

    def files(self) -> Dict[str, str]:
        base = f"examples/{self.family.name}"
        return {
            f"{base}/pretrain_{self.name}_ptd.sh": self.pretrain(),
            f"{base}/tune_{self.name}_full_ptd.sh": self.tune_full(),
            f"{base}/tune_{self.name}_lora_ptd.sh": self.tune_lora(),
            f"{base}/generate_{self.name}_ptd.sh": self.generate(),
            f"{base}/chat_{self.name}_ptd.sh": self.chat(),
            f"{base}/evaluate_{self.name}_ptd.sh": self.evaluate(),
            f"{base}/ckpt_convert_{self.name}_hf2mcore.sh": self._convert("hf2mcore"),
            f"{base}/ckpt_convert_{self.name}_mcore2hf.sh": self._convert("mcore2hf"),
        }


def _data_convert(family: Family, instruction: bool) -> str:
    first = f"{family.name}-{next(iter(family.sizes))}"
    if instruction:
        what = (f"instruction data (Alpaca-style) in the {family.template} prompt format, "
                "packed for tune_*_ptd.sh")
        out = f"./finetune_dataset/{first}/alpaca"
        extra = [["--handler-name", "AlpacaStyleInstructionHandler"],
                 ["--prompt-type", family.template], ["--pack"], ["--seq-length", "4096"]]
    else:
        what = "pretraining text into the indexed dataset pretrain_*_ptd.sh reads"
        out = f"./dataset/{first}/alpaca"
        extra = [["--json-keys", "text"], ["--append-eod"]]
    return ("#!/bin/bash\n" + _comment(
                f"{family.name}: {what}.\n"
                "Generated by tools/gen_examples.py; edit the family, not this file.") +
            'INPUT=${INPUT:-"./dataset/train-00000-of-00001-a09b74b3ef9c3b56.parquet"}\n'
            f'TOKENIZER_PATH=${{TOKENIZER_PATH:-"./model_from_hf/{first}-hf/"}}\n'
            f'OUTPUT_PREFIX=${{OUTPUT_PREFIX:-"{out}"}}\n\n'
            'SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)\n'
            'python "$SCRIPT_DIR/../../preprocess_data.py" \\\n'
            + _block([["--input", "${INPUT}"], ["--tokenizer-type", "PretrainedFromHF"],
                      ["--tokenizer-name-or-path", "${TOKENIZER_PATH}"],
                      ["--output-prefix", "${OUTPUT_PREFIX}"], ["--workers", "4"]]
                     + extra + [["${EXTRA_ARGS:-}"]]) + "\n")


def plan_args(script: Script, whole: bool = False) -> argparse.Namespace:
    """The pretrain script's arguments as the planner parses them (`whole`: the unsplit
    model on one device, to count its parameters)."""
    layout = script.size.layout
    values = {"${TP}": layout.tp, "${PP}": layout.pp, "${EP}": layout.ep}
    flags: List[str] = []
    for group in script.train_flags():
        if group[0] == "${MODEL_ARGS}":
            group = [token for shape in script.shape for token in shape]
        elif group[0].startswith("--tokenizer") or (whole and group[0] == "--sequence-parallel"):
            continue
        flags += [str(values.get(token, token)) for token in group]
    world = DEVICES * script.nodes
    if whole:
        flags += ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1",
                  "--expert-model-parallel-size", "1", "--micro-batch-size", "1",
                  "--global-batch-size", "1"]
        world = 1
    return with_padded_vocab(parse_args(flags + ["--mock-data", "--train-iters", "1"],
                                        world_size=world))


def _models_md(scripts: List[Script]) -> str:
    rows = []
    for script in scripts:
        layout = script.size.layout
        if script.not_planned is not None:
            params, memory = "-", f"not planned: {script.not_planned}"
        else:
            params = f"{script.params / 1e9:.2f} B"
            memory = (f"{script.peak / 1e9:.1f} GB "
                      f"{'fits' if script.peak <= DEVICE_MEMORY else 'over'}")
        ep = f" EP{layout.ep}" if script.moe else ""
        recompute = (f", recompute {script.recompute}"
                     f"{' (added: over 64 GB without)' if script.recompute_added else ''}"
                     if script.recompute else "")
        rows.append(
            f"| {script.family.name} | {script.size_name} | {params} | TP{layout.tp} "
            f"PP{layout.pp}{ep} x DP{DEVICES * script.nodes // (layout.tp * layout.pp)}"
            f"{recompute}, micro {layout.micro_batch}, global {layout.global_batch} | {memory} "
            f"| `examples/{script.family.name}/*_{script.name}_*.sh` |")
    return (
        "# Model cards\n\n"
        "Generated by `python tools/gen_examples.py` from the family files "
        "(modellink/models/families/) and the memory planner (`modellink.plan.estimate`); "
        "tests/test_family_scripts.py fails when this page or a script is stale.\n\n"
        f"Every size is laid out for {DEVICES} x 64 GB devices per node, trained in bf16 at "
        f"sequence length min({TRAIN_SEQ}, the model's context) with the distributed "
        "optimizer; where the family's layout alone would not fit, the generator adds full "
        "activation recomputation (marked \"added\"). The estimate is the planner's peak on "
        "the busiest rank: bf16 weights (2 B/param) and gradients (2 B/param) of the rank's "
        "TP x PP (x EP) slice, fp32 main weights and Adam moments (12 B/param) split over the "
        "data-parallel ranks, plus "
        "activations of the in-flight micro-batches (full recomputation keeps one layer's "
        "input per layer). Run `python -m modellink.plan --model <family>-<size> --devices N "
        "...` for the breakdown. Parameters count the whole model (embedding and output "
        "once each, as stored).\n\n"
        "| family | size | parameters | layout (8 devices/node) | peak per device | scripts |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "## What proves each family\n\n"
        f"- Conversion and logits against transformers: `{CONVERT_TESTS}` (every family).\n"
        f"- The committed scripts and this page equal the generator's output: "
        f"`{SCRIPT_TESTS}::test_committed_files_are_current`.\n"
        f"- Every family's pretrain and full fine-tune scripts (its first size with a generated "
        f"pretrain script, else Mixtral's hand-written one; LoRA too for "
        f"{', '.join(LORA_TESTED)}) run shrunk through MODEL_ARGS for two iterations on two CPU ranks, the fine-tune starting "
        f"from the pretrain's checkpoint, all in one torchrun job: "
        f"`{SCRIPT_TESTS}::test_scripts_train_shrunk_on_two_cpu_ranks`. Other "
        f"sizes of a family are rendered by the same code from their own numbers.\n"
        f"- Every family's generate script (its first size) reproduces transformers' greedy "
        f"tokens on a converted tiny model with that size's architecture, converted by its "
        f"ckpt_convert hf2mcore script; for the trust_remote_code families the reference is "
        f"the forward of tests/remote_code_families.py: "
        f"`{GENERATE_TESTS}::test_generate_script_reproduces_transformers_greedy`.\n"
        "- The hand-written LLaMA-2-7B and Mixtral-8x7B scripts: tests/test_example_scripts.py, "
        "tests/test_inference_examples.py, "
        "tests/test_finetune_example.py, tests/test_lora_example.py.\n")


def render() -> Dict[str, str]:
    """Every generated file, by path relative to the repository root."""
    files: Dict[str, str] = {}
    scripts = []
    for family in FAMILIES.values():
        files[f"examples/{family.name}/data_convert_{family.name}_pretrain.sh"] = \
            _data_convert(family, False)
        files[f"examples/{family.name}/data_convert_{family.name}_instruction.sh"] = \
            _data_convert(family, True)
        for size_name, size in family.sizes.items():
            script = Script(family, size_name, size)
            script.plan()
            scripts.append(script)
            files.update(script.files())
    files["docs/models.md"] = _models_md(scripts)
    return {path: text for path, text in files.items() if path not in HAND_WRITTEN}


def stale(files: Dict[str, str]) -> List[str]:
    out = []
    for path, text in files.items():
        full = os.path.join(ROOT, path)
        if not os.path.exists(full) or open(full, encoding="utf-8").read() != text:
            out.append(path)
    return out


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 naming the files that differ")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        paths = stale(files)
        for path in paths:
            print(f"stale: {path} (run python tools/gen_examples.py)")
        return 1 if paths else 0
    for path, text in files.items():
        full = os.path.join(ROOT, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="utf-8") as f:
            f.write(text)
        if path.endswith(".sh"):
            os.chmod(full, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The memory planner (modellink/plan): its weight, gradient and optimizer bytes equal the
tensor bytes of the model, DDP buffers and optimizer that pretrain() builds, and its activation
peak is within 15% of the peak of tensors autograd keeps for backward (one job per world size,
tests/plan_probe.py); bad input is a one-line error."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, _free_port
from modellink.argument_errors import ArgumentError
from modellink.plan.cli import inference_args, main as plan_main, parse_memory
from modellink.arguments import parse_args
from modellink.plan.activations import layer_terms
from modellink.plan.kv_cache import kv_cache_bytes
from modellink.training.pretrain import pretrain

BASE = [
    "--num-layers", "4", "--hidden-size", "32", "--ffn-hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "16", "--mock-data", "--vocab-size", "100",
    "--micro-batch-size", "2", "--global-batch-size", "4", "--seed", "1234",
    "--use-cpu-initialization", "--device", "cpu", "--log-interval", "1",
    "--eval-interval", "1000", "--eval-iters", "0", "--lr", "1e-3", "--train-iters", "1",
    "--attention-dropout", "0", "--hidden-dropout", "0",
]
LLAMA = ["--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
         "--position-embedding-type", "rope"]
ONE_RANK = {
    "fp32 untied GQA": LLAMA + ["--untie-embeddings-and-output-weights",
                                "--group-query-attention", "--num-query-groups", "2"],
    "bf16 distributed optimizer, fp32 grads, qk norm": [
        "--bf16", "--use-distributed-optimizer", "--accumulate-allreduce-grads-in-fp32",
        "--qk-layernorm"],
    "selective recompute, dropout": LLAMA + ["--recompute-granularity", "selective",
                                             "--hidden-dropout", "0.1",
                                             "--attention-dropout", "0.1"],
    "full recompute, block": ["--recompute-granularity", "full", "--recompute-method", "block",
                              "--recompute-num-layers", "2"],
    # The CPU SwiGLU keeps the gate's activation beside the product (ops/swiglu.py).
    "fused SwiGLU and RMSNorm, wide MLP": LLAMA + ["--use-fused-swiglu", "--use-fused-rmsnorm",
                                                  "--ffn-hidden-size", "512"],
    # DeepSeek-V2's attention and MoE: low-rank queries, shared experts, the first layer dense.
    "MLA, DeepSeek MoE": LLAMA + [
        "--multi-head-latent-attention", "--qk-layernorm", "--q-lora-rank", "8",
        "--kv-lora-rank", "8", "--qk-rope-head-dim", "4", "--qk-nope-head-dim", "8",
        "--v-head-dim", "6", "--num-experts", "4", "--moe-intermediate-size", "16",
        "--n-shared-experts", "1", "--first-k-dense-replace", "1", "--moe-router-pre-softmax"],
}
TWO_RANKS = {
    "TP2 SP, LayerNorm, biases": ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                  "--bf16", "--add-qkv-bias"],
    "PP2 VPP2, tied embeddings": LLAMA + ["--pipeline-model-parallel-size", "2",
                                          "--num-layers-per-virtual-pipeline-stage", "1"],
    "MoE EP2, shared expert": ["--num-experts", "4", "--expert-model-parallel-size", "2",
                               "--bf16", "--use-distributed-optimizer", "--disable-bias-linear",
                               "--moe-shared-expert-intermediate-size", "32",
                               "--shared-expert-gate"],
    "CP2 distributed optimizer": ["--context-parallel-size", "2", "--use-flash-attn", "--bf16",
                                  "--use-distributed-optimizer", "--position-embedding-type",
                                  "rope"],
    "replica optimizer": ["--bf16", "--use-distributed-optimizer",
                          "--enable-high-availability", "--enable-optimizer-state-local-copy"],
    "TP2 SP MLA, bf16": LLAMA + ["--tensor-model-parallel-size", "2", "--sequence-parallel",
                                 "--bf16", "--multi-head-latent-attention", "--qk-layernorm",
                                 "--kv-lora-rank", "8", "--qk-rope-head-dim", "4",
                                 "--qk-nope-head-dim", "8", "--v-head-dim", "6"],
    "PP2 full recompute, uniform": LLAMA + ["--pipeline-model-parallel-size", "2",
                                            "--recompute-granularity", "full",
                                            "--recompute-method", "uniform",
                                            "--recompute-num-layers", "1"],
}
ACTIVATION_TOLERANCE = 0.15


def _probe(tmp_path, runs, nproc):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore",
               MODELLINK_TEST_RUNS=json.dumps([BASE + flags for flags in runs.values()]))
    probe = str(ROOT / "tests" / "plan_probe.py")
    if nproc == 1:
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)
        cmd = [sys.executable, probe, str(tmp_path)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_free_port()}", probe, str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    # The first log line's memory report (modellink/training/monitoring/memory.py) carries the
    # planner's peak of the rank's stage; ranks 0 of every run print one.
    reported = {float(mb) for mb in re.findall(
        r"\[Rank \d+\] \(after 1 iterations\) memory \(MB\) \| predicted peak ([\d.]+) \| "
        r"measured peak [\d.]+ \(RSS growth since model build\)", result.stdout)}
    for index in range(len(runs)):
        record = json.loads((tmp_path / f"{index}.0.json").read_text())
        assert round(record["planned"]["peak"] / 2**20, 1) in reported, (index, reported)
    return {name: [json.loads((tmp_path / f"{index}.{rank}.json").read_text())
                   for rank in range(nproc)]
            for index, name in enumerate(runs)}


def _check(records, sharded_over_two=()):
    for name, ranks in records.items():
        for record in ranks:
            for key in ("weights", "grads"):
                assert record["planned"][key] == record["measured"][key], (name, key)
            planned, measured = record["planned"]["activations"], record["measured"]["activations"]
            assert abs(planned / measured - 1) <= ACTIVATION_TOLERANCE, (name, planned, measured)
        if name in sharded_over_two:
            # Shard edges follow DDP's alignment padding, so one rank may hold a few more
            # elements than the other; the pair holds exactly the planned state.
            planned = sum(r["planned"]["optimizer"] for r in ranks)
            assert planned == sum(r["measured"]["optimizer"] for r in ranks), name
        else:
            for record in ranks:
                assert record["planned"]["optimizer"] == record["measured"]["optimizer"], name


def test_one_rank_bytes_equal_the_built_model(tmp_path):
    _check(_probe(tmp_path, ONE_RANK, 1))


def test_two_rank_layouts_bytes_equal_the_built_model(tmp_path):
    _check(_probe(tmp_path, TWO_RANKS, 2),
           sharded_over_two=("MoE EP2, shared expert", "CP2 distributed optimizer"))


@pytest.mark.parametrize("text, expected", [("64GB", 64 * 10**9), ("80GiB", 80 * 2**30),
                                            ("1.5 TB", 1.5e12), ("512MiB", 512 * 2**20)])
def test_memory_strings(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["--devices", "8", "--device-memory", "64 parsecs"], "--device-memory '64 parsecs'"),
    (["--devices", "6", "--tensor-model-parallel-size", "4", "--device-memory", "64GB"],
     "world size 6 is not divisible"),
    (["--devices", "8", "--num-layers", "30", "--pipeline-model-parallel-size", "4",
      "--device-memory", "64GB"], "--num-layers 30 is not divisible"),
    (["--devices", "8", "--model", "llama9-7b"], "--model: unknown model 'llama9-7b'"),
    (["--devices", "2", "--search"], "--search needs --device-memory"),
])
def test_bad_input_is_one_line(argv, message):
    flags = BASE + LLAMA
    with pytest.raises(ArgumentError, match=message.replace("(", r"\(")) as error:
        plan_main(flags + argv)
    assert "\n" not in str(error.value)


def test_plan_only_prints_the_runs_plan_and_starts_nothing(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    pretrain(BASE + ["--tensor-model-parallel-size", "2", "--plan-only"])
    out = capsys.readouterr().out
    assert "TP 2 x PP 1 x CP 1 x DP 1" in out and "peak:" in out
    assert not torch.distributed.is_initialized()
    plan_main(BASE + ["--tensor-model-parallel-size", "2", "--devices", "2"])
    # pretrain() pads the mock tokenizer's vocabulary (100 + end-of-document), the planner
    # --vocab-size: both round up to the same 128 x TP multiple, so the plans agree.
    assert capsys.readouterr().out == out


MLA = ["--multi-head-latent-attention", "--qk-layernorm", "--q-lora-rank", "8",
       "--kv-lora-rank", "8", "--qk-rope-head-dim", "4", "--qk-nope-head-dim", "8",
       "--v-head-dim", "6"]


@pytest.mark.parametrize("attention, expected, formula", [
    # 4 layers x 2 kv heads x 2 x head dim 8 x max-length 24 x batch 3 x 2 bytes
    (["--group-query-attention", "--num-query-groups", "2"], 4 * 2 * 2 * 8 * 24 * 3 * 2,
     "KV cache = layers/PP x kv heads/TP x 2 x head dim"),
    # MLA caches every head's key (8 + 4 channels) and value (6): 4 x 4 x 18 x 24 x 3 x 2
    (MLA, 4 * 4 * (8 + 4 + 6) * 24 * 3 * 2, "x (qk-nope + qk-rope + v head dims)"),
])
def test_kv_cache_equals_the_inference_cache(monkeypatch, capsys, attention, expected, formula):
    from megatron.core.inference.contexts import StaticInferenceContext
    from modellink.models.gpt import build_model_chunks, transformer_config_from_args
    from modellink.training.initialize import initialize, shutdown
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                       ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
        monkeypatch.setenv(key, value)
    flags = BASE + LLAMA + attention + ["--bf16", "--micro-batch-size", "3",
                                        "--global-batch-size", "3", "--max-length", "24"]
    args = inference_args(flags, world_size=1)
    args.padded_vocab_size = 128
    backend = initialize(args)
    try:
        chunks = build_model_chunks(args, transformer_config_from_args(args, backend.device))
        cache = StaticInferenceContext(3, 24)
        tokens = torch.randint(0, 100, (3, 5))
        with torch.inference_mode():
            chunks[0](tokens, torch.arange(5).expand(3, 5), None, inference_context=cache)
        measured = sum(t.numel() * t.element_size() for pair in cache.key_value_memory_dict.values()
                       for t in pair)
    finally:
        shutdown()
    assert measured == kv_cache_bytes(args, 0) == expected
    plan_main(flags + ["--inference", "--devices", "1"])
    assert formula in capsys.readouterr().out


def test_latent_attention_activations_by_hand():
    # fp32, TP 1, the reference RMSNorm (input, fp32 copy and output: 12 B an element), seq 16.
    args = parse_args(BASE + LLAMA + MLA, world_size=1)
    terms = layer_terms(args)
    # The latents: key/value (8) + shared RoPE key (4) as the down projection's output, query
    # (8) likewise, each norm's fp32 copy and output beyond its input: 4 x (12 + 8) + 8 x 2 x 8.
    assert terms["query and key/value latents with their norms (whole under TP)"] == 208
    # 4 heads x (Q and K of 8 + 4 channels, the up-projected 8 + 6 keys/values, the 6-channel
    # projection input) x 4 B.
    assert terms["Q, K, up-projected keys/values and projection input"] == 4 * 4 * 44
    # Two norms on hidden 32, scores of 4 heads x 16 keys, the SwiGLU MLP of width 64.
    assert sum(terms.values()) == 768 + 208 + 704 + 4 * 4 * 16 + (8 + 12) * 64


def test_search_ranks_by_the_stated_formulas(capsys):
    from modellink.arguments import parse_args
    from modellink.plan.cli import with_padded_vocab
    from modellink.plan.search import search
    memory = 2**30
    layouts = search(BASE, 2, memory, lambda f: with_padded_vocab(parse_args(f, world_size=2)))
    for layout in layouts:
        a = layout.args
        assert a.tensor_model_parallel_size * a.pipeline_model_parallel_size * \
            a.context_parallel_size * a.data_parallel_size == 2 and layout.plan.peak <= memory
    best = layouts[0].args
    # Bubble 0 rules out PP 2. TP 2 (m = 2 micro-batches) sends 4 all-reduces x 4 layers x 2 x
    # 2(2-1)/2 x 32 tokens x 32 hidden x 4 bytes; DP 2 sends its fp32 gradients once
    # (2(2-1)/2 x P x 4), more than that for this model; recompute off beats on at equal bytes.
    assert (best.tensor_model_parallel_size, best.pipeline_model_parallel_size,
            layouts[0].recompute) == (2, 1, "off")
    assert layouts[0].comm_bytes == 4 * 4 * 2 * 1 * 32 * 32 * 4
    dp2 = next(x for x in layouts if x.args.data_parallel_size == 2)
    assert dp2.comm_bytes == dp2.plan.stages[0].grads > layouts[0].comm_bytes
    plan_main(BASE + ["--search", "--devices", "2", "--device-memory", "1GiB", "--top", "3"])
    out = capsys.readouterr().out
    assert "bubble = (PP - 1) / (m + PP - 1) / VPP" in out and len(out.splitlines()) == 2 + 3 + 6


def test_model_preset_plans_the_zoo_size(capsys):
    plan_main(["--model", "llama2-7b", "--devices", "8", "--tensor-model-parallel-size", "8",
               "--micro-batch-size", "1", "--global-batch-size", "8", "--mock-data",
               "--train-iters", "1", "--lr", "1e-4", "--bf16"])
    # 6.74 B parameters with the 32000-word vocabulary padded to 32768 (128 x TP): 1/8 each.
    assert " 843,321,344 " in capsys.readouterr().out
    # Alone, the preset brings its example scripts' layout (TP8): the same share per rank.
    plan_main(["--model", "llama2-7b", "--devices", "8"])
    assert " 843,321,344 " in capsys.readouterr().out


ZOO = ["--mock-data", "--train-iters", "1", "--lr", "1e-6", "--bf16", "--use-flash-attn",
       "--use-distributed-optimizer", "--sequence-parallel", "--micro-batch-size", "1",
       "--use-fused-rmsnorm", "--tensor-model-parallel-size", "8",
       "--pipeline-model-parallel-size", "4", "--devices", "32", "--device-memory", "64GB"]


@pytest.mark.parametrize("flags, row", [
    (["--model", "llama2-70b", "--global-batch-size", "32", "--use-fused-swiglu"],
     "| LLaMA-2-70B | 4.05 + 4.05 + 24.28 = 32.38 GiB | 16 x 2.173 B = 32.38 GiB | 2.80 / 11.18 GiB "
     "| 2.66 / 10.62 GiB | 43.56 GiB, fits |"),
    (["--model", "qwen25-72b", "--global-batch-size", "32", "--seq-length", "4096",
      "--use-fused-swiglu"],
     "| Qwen2.5-72B (seq 4096) | 4.38 + 4.38 + 26.27 = 35.02 GiB | 16 x 2.351 B = 35.03 GiB | "
     "2.85 / 11.39 GiB | 2.66 / 10.62 GiB | 46.42 GiB, fits |"),
    (["--model", "mixtral-8x7b", "--global-batch-size", "8", "--expert-model-parallel-size", "1",
      "--seq-length", "32768", "--moe-token-dispatcher-type", "allgather", "--vocab-size",
      "32000", "--make-vocab-size-divisible-by", "1"],
     "| Mixtral-8x7B | 2.73 + 2.73 + 16.41 = 21.88 GiB | 16 x 1.468 B = 21.87 GiB | "
     "12.94 / 51.77 GiB | 4.25 / 17.0 GiB | 73.64 GiB, does NOT fit |"),
])
def test_docs_zoo_rows_are_the_planners_output(flags, row, capsys):
    plan_main(flags + ZOO)
    # "0  params  w GiB  g GiB  o GiB  act/mb GiB  in-flight  activations GiB  peak GiB"
    stage0 = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("    0 ")).split()
    weights, grads, optimizer, per_mb, active, peak = (stage0[i] for i in (2, 4, 6, 8, 11, 13))
    cells = row.split(" | ")
    assert cells[1] == f"{weights} + {grads} + {optimizer} = " + cells[1].split(" = ")[1]
    assert cells[3] == f"{per_mb} / {active} GiB" and cells[5].startswith(f"{peak} GiB")
    assert row in (ROOT / "docs" / "planner.md").read_text()

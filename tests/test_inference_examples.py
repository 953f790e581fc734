"""The LLaMA-2 generate / chat / evaluate example scripts run unchanged on two CPU ranks with
a tiny converted model put in through their environment overrides."""

import pytest

from conftest import run_example
from test_evaluation_scoring import write_mmlu
from test_inference_generate import convert, tiny_llama, word_tokenizer


@pytest.fixture(scope="module")
def tiny_tp2(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    tiny_llama(root / "hf")
    flags = convert(root / "hf", root / "tp2", "--target-tensor-parallel-size", "2")
    convert(root / "hf", root / "pp2", "--target-pipeline-parallel-size", "2")
    return root, flags, word_tokenizer(root / "tokenizer")


@pytest.mark.parametrize("script,layout,stdin,expected", [
    ("generate", "tp2", "", ["Greedy Search", "Beam Search with Sampling", "log probs: ["]),
    ("chat", "tp2", "w5 w6\nexit\n", ["You >> ", "ModelLink >> "]),
    ("evaluate", "pp2", "", ["total", "results written to"]),
])
def test_example_script_on_two_cpu_ranks(tiny_tp2, tmp_path, script, layout, stdin, expected):
    root, flags, tokenizer = tiny_tp2
    shape_end = flags.index("--untie-embeddings-and-output-weights")
    data, _ = write_mmlu(tmp_path)
    result = run_example(
        f"llama2/{script}_llama2_7b_ptd.sh", stdin=stdin,
        GPUS_PER_NODE="2", TP="2" if layout == "tp2" else "1",
        PP="2" if layout == "pp2" else "1",
        MODELLINK_CPU_THREADS="1", CHECKPOINT=str(root / layout), TOKENIZER_PATH=tokenizer,
        DATA_PATH=str(data), MODEL_ARGS=" ".join(flags[:shape_end]),
        EXTRA_ARGS=f"--device cpu --max-new-tokens 4 --max-length 64 "
                   f"--eval-output {tmp_path / 'results.json'} --max-eval-samples 2"
        if script == "evaluate" else "--device cpu --max-new-tokens 4 --max-length 64 --top-k 5")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]

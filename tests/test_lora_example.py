"""The LLaMA-2-7B LoRA example script runs unchanged on two CPU ranks with a small override,
on a tiny Hugging Face Llama converted to Megatron (TP=2) as its base model."""

import torch

from conftest import run_example
from data_helpers import demo, preprocess  # noqa: F401  (demo is a fixture)
from test_finetune_example import converted_base


def test_llama2_7b_lora_script_on_two_cpu_ranks(tmp_path, demo):  # noqa: F811
    converted_base(tmp_path, demo["tokenizer"], str(tmp_path / "base"))
    preprocess(demo["instruction"], tmp_path / "alpaca", demo["tokenizer"],
               "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "llama2")
    result = run_example(
        "llama2/tune_llama2_7b_lora_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=str(tmp_path / "alpaca"), TOKENIZER_PATH=demo["tokenizer"],
        LORA_R="4", LORA_ALPHA="8",
        CKPT_LOAD_DIR=str(tmp_path / "base"), CKPT_SAVE_DIR=str(tmp_path / "lora"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 64 --max-position-embeddings 64",
        EXTRA_ARGS="--device cpu --train-iters 2 --global-batch-size 4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "logs" / "tune_llama2_7b_lora.log").read_text()
    assert "iteration        2/       2" in log
    assert "LoRA r 4, alpha 8 on linear_qkv linear_proj linear_fc1 linear_fc2" in result.stdout
    assert (tmp_path / "lora" / "latest_checkpointed_iteration.txt").read_text() == "2"
    saved = torch.load(tmp_path / "lora" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       weights_only=False)["model"]
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)

"""The LLaMA-2-7B full fine-tuning script runs unchanged on two CPU ranks with a small override:
a tiny Hugging Face Llama converted to Megatron (TP=2), fine-tuned on the demo's instruction
data preprocessed with the Alpaca handler and packed."""
from pathlib import Path

import torch
import transformers

from conftest import run_example
from data_helpers import demo, preprocess  # noqa: F401
from test_convert_families import convert

MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-5)


def converted_base(tmp_path, tokenizer_path: str, save_dir: str) -> None:
    """A tiny random HF Llama over the demo tokenizer, converted to Megatron at TP=2."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tokenizer), **MODEL))
    hf.save_pretrained(tmp_path / "hf")
    convert("--load-model-type", "hf", "--save-model-type", "mg",
            "--load-dir", str(tmp_path / "hf"), "--save-dir", save_dir,
            "--target-tensor-parallel-size", "2")


def move_to_iteration(save_dir: Path, iteration: int) -> None:
    """The converter saves at iteration 0, where resuming and restarting look alike; a later
    iteration makes a resumed count show (it would start past --train-iters)."""
    iter_dir = save_dir / f"iter_{iteration:07d}"
    (save_dir / "iter_0000000").rename(iter_dir)
    for path in iter_dir.glob("mp_rank_*/model_optim_rng.pt"):
        state = torch.load(path, weights_only=False)
        state["iteration"] = iteration
        torch.save(state, path)
    (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))


def test_llama2_7b_full_tune_script_on_two_cpu_ranks(tmp_path, demo):  # noqa: F811
    converted_base(tmp_path, demo["tokenizer"], str(tmp_path / "mg"))
    move_to_iteration(tmp_path / "mg", 5)
    preprocess(demo["instruction"], tmp_path / "alpaca", demo["tokenizer"], "--handler-name",
               "AlpacaStyleInstructionHandler", "--prompt-type", "llama2", "--append-eod",
               "--pack", "--seq-length", "64")
    result = run_example(
        "llama2/tune_llama2_7b_full_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=str(tmp_path / "alpaca"), TOKENIZER_PATH=demo["tokenizer"],
        CKPT_LOAD_DIR=str(tmp_path / "mg"), CKPT_SAVE_DIR=str(tmp_path / "sft"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 64 --max-position-embeddings 64",
        EXTRA_ARGS="--device cpu --train-iters 3 --global-batch-size 4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "instruction data, prompt type llama2, padded length per micro-batch" in result.stdout
    assert "iteration        3/       3" in (tmp_path / "logs" / "tune_llama2_7b.log").read_text()
    # --finetune restarts the count: the base checkpoint's iteration 5 is not resumed.
    assert (tmp_path / "sft" / "latest_checkpointed_iteration.txt").read_text() == "3"

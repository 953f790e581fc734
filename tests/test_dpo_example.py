"""The LLaMA-2-7B DPO script runs unchanged on two CPU ranks with a small override: a tiny
Hugging Face Llama converted to Megatron (TP=2), trained with DPO on pairs made from the
demo's instruction data (its answer chosen, another record's answer rejected) preprocessed
with the Alpaca pairwise handler."""
import json

from conftest import run_example
from data_helpers import demo, preprocess, write_jsonl  # noqa: F401
from test_finetune_example import converted_base


def test_llama2_7b_dpo_script_on_two_cpu_ranks(tmp_path, demo):  # noqa: F811
    converted_base(tmp_path, demo["tokenizer"], str(tmp_path / "mg"))
    with open(demo["instruction"], encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle][:64]
    pairs = [dict(record, chosen=record["output"], rejected=records[i - 1]["output"])
             for i, record in enumerate(records)]
    write_jsonl(tmp_path / "pairs.jsonl", [{k: v for k, v in p.items() if k != "output"}
                                           for p in pairs])
    preprocess(tmp_path / "pairs.jsonl", tmp_path / "pairs", demo["tokenizer"], "--handler-name",
               "AlpacaStylePairwiseHandler", "--prompt-type", "llama2", "--seq-length", "64")
    result = run_example(
        "llama2/dpo_llama2_7b_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=str(tmp_path / "pairs"), TOKENIZER_PATH=demo["tokenizer"],
        CKPT_LOAD_DIR=str(tmp_path / "mg"), CKPT_SAVE_DIR=str(tmp_path / "dpo"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 64 --max-position-embeddings 64",
        EXTRA_ARGS="--device cpu --train-iters 3 --global-batch-size 4")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "logs" / "dpo_llama2_7b.log").read_text()
    assert "iteration        3/       3" in log and "rewards/accuracies: " in log
    # The policy starts as its reference: the first DPO loss is log(2).
    assert "lm loss: 6.931472E-01 | rewards/chosen: 0.000000E+00" in log
    assert (tmp_path / "dpo" / "latest_checkpointed_iteration.txt").read_text() == "3"

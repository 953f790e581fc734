"""The LLaMA-2-7B, Qwen1.5-7B and Mixtral-8x7B example scripts run unchanged on two CPU ranks
with a small override."""

import numpy
import sentencepiece
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import run_example
from data_helpers import demo  # noqa: F401


def _tiny_sentencepiece(tmp_path) -> str:
    corpus = tmp_path / "corpus.txt"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
    rng = numpy.random.default_rng(0)
    corpus.write_text("\n".join(" ".join(rng.choice(words, 12)) for _ in range(300)))
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(tmp_path / "tok"), vocab_size=64,
        model_type="bpe", bos_id=1, eos_id=2, unk_id=0, pad_id=-1)
    return str(tmp_path / "tok.model")


def _dataset(tmp_path) -> str:
    prefix = str(tmp_path / "alpaca_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    rng = numpy.random.default_rng(1)
    for _ in range(100):
        builder.add_document(rng.integers(3, 64, size=40, dtype=numpy.int32), [40])
    builder.finalize(prefix + ".idx")
    return prefix


def test_llama2_7b_script_on_two_cpu_ranks(tmp_path):
    result = run_example(
        "llama2/pretrain_llama2_7b_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=_dataset(tmp_path), TOKENIZER_MODEL=_tiny_sentencepiece(tmp_path),
        CKPT_LOAD_DIR=str(tmp_path / "ckpt"), CKPT_SAVE_DIR=str(tmp_path / "ckpt"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 32 --max-position-embeddings 32",
        EXTRA_ARGS="--device cpu --train-iters 3 --global-batch-size 4 --eval-iters 1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "iteration        3/       3" in (tmp_path / "logs" / "train_llama2_7b.log").read_text()
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text() == "3"


def test_qwen15_7b_script_on_two_cpu_ranks(tmp_path, demo):  # noqa: F811
    result = run_example(
        "qwen15/pretrain_qwen15_7b_ptd.sh",
        GPUS_PER_NODE="2", TP="2", PP="1",
        DATA_PATH=_dataset(tmp_path), TOKENIZER_PATH=demo["tokenizer"],
        CKPT_LOAD_DIR=str(tmp_path / "ckpt"), CKPT_SAVE_DIR=str(tmp_path / "ckpt"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
                   "--padded-vocab-size 512",
        EXTRA_ARGS="--device cpu --train-iters 2 --global-batch-size 2 --save-interval 2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "iteration        2/       2" in (tmp_path / "logs" / "train_qwen15_7b.log").read_text()
    saved = torch.load(tmp_path / "ckpt" / "iter_0000002" / "mp_rank_01" / "model_optim_rng.pt",
                       map_location="cpu", weights_only=False)
    assert saved["args"].add_qkv_bias and saved["args"].rotary_base == 1e6
    assert any(key.endswith("linear_qkv.bias") for key in saved["model"])


def test_mixtral_8x7b_script_on_two_cpu_ranks_with_expert_parallelism(tmp_path):
    result = run_example(
        "mixtral/pretrain_mixtral_8x7b_ptd.sh",
        GPUS_PER_NODE="2", NNODES="1", TP="1", PP="1", EP="2",
        DATA_PATH=_dataset(tmp_path), TOKENIZER_MODEL=_tiny_sentencepiece(tmp_path),
        CKPT_LOAD_DIR=str(tmp_path / "ckpt"), CKPT_SAVE_DIR=str(tmp_path / "ckpt"),
        LOG_DIR=str(tmp_path / "logs"),
        MODEL_ARGS="--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 "
                   "--num-attention-heads 4 --seq-length 32 --max-position-embeddings 32",
        EXTRA_ARGS="--device cpu --num-query-groups 2 --train-iters 2 --global-batch-size 2 "
                   "--save-interval 2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (tmp_path / "logs" / "train_mixtral_8x7b.log").read_text()
    assert "iteration        2/       2" in log
    assert "--moe-permutation-async-comm has no effect" in log
    assert "SequentialMLP (--moe-grouped-gemm asked, grouped_gemm package absent)" in log
    for ep_rank in ("000", "001"):  # 8 experts, 4 on each expert-parallel rank
        saved = torch.load(tmp_path / "ckpt" / "iter_0000002" / f"mp_rank_00_{ep_rank}" /
                           "model_optim_rng.pt", map_location="cpu", weights_only=False)
        experts = {key.split(".")[6] for key in saved["model"] if ".local_experts." in key}
        assert experts == {"0", "1", "2", "3"}

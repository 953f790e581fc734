"""Megatron-side sources: resharding to another layout, and a checkpoint trained by
pretrain_gpt.py exported to Hugging Face."""
import json

import pytest
import torch
import transformers

from conftest import TINY_LLAMA, train_history
from logits_parity import assert_logits_close
from test_convert_families import (
    RUN_FLAGS, TOKENS, convert, dump_logits, hf_logits, save_tiny_hf)

# HF -> tp2pp2 -> a chain of reshards; each step must still give transformers' logits.
RESHARDS = {
    "tp1pp2_uneven": ["--target-pipeline-parallel-size", "2", "--num-layer-list", "3,1"],
    "tp2pp1": ["--target-tensor-parallel-size", "2"],
    "pp2_vpp": ["--target-pipeline-parallel-size", "2",
                "--num-layers-per-virtual-pipeline-stage", "1"],
}
TRAIN_LAYOUT = ["--tensor-model-parallel-size", "2"]


def _tokenizer(root) -> str:
    """A tiny word-level Hugging Face tokenizer saved under root/tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 100)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]") \
        .save_pretrained(root / "tokenizer")
    return str(root / "tokenizer")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("megatron")
    model = save_tiny_hf("llama2", root / "hf")
    flags = convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
                    str(root / "hf"), "--save-dir", str(root / "start"),
                    "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2")
    model_flags = [f for f in flags[:flags.index("--tensor-model-parallel-size")]] + \
        flags[flags.index("--padded-vocab-size"):]
    jobs, previous = [], root / "start"
    for name, layout in RESHARDS.items():
        convert("--load-model-type", "mg", "--save-model-type", "mg", "--load-dir",
                str(previous), "--save-dir", str(root / name), *layout)
        run_layout = [f.replace("--target-", "--").replace("parallel-size", "model-parallel-size")
                      if f.startswith("--target-") else f for f in layout]
        jobs.append({"argv": model_flags + run_layout + RUN_FLAGS + [
            "--load", str(root / name), "--global-batch-size", "4"],
            "tokens": TOKENS, "out": str(root / f"{name}.pt")})
        previous = root / name

    trained = root / "trained"
    train_history(root, TINY_LLAMA + TRAIN_LAYOUT + ["--train-iters", "3", "--save", str(trained)],
                  nproc=2)
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(trained),
            "--save-dir", str(root / "trained_hf"), "--tokenizer-model", _tokenizer(root))
    tokens = [row for row in torch.tensor(TOKENS).remainder(100).tolist()]
    jobs.append({"argv": TINY_LLAMA + TRAIN_LAYOUT + ["--train-iters", "0", "--finetune",
                                                      "--load", str(trained)],
                 "tokens": tokens, "out": str(root / "trained.pt")})
    dump_logits(jobs, 2, root)
    return root, hf_logits(model), tokens


@pytest.mark.parametrize("name", list(RESHARDS))
def test_reshard_keeps_logits_and_weights(checkpoints, name, tmp_path):
    root, reference, _ = checkpoints
    ours = torch.load(root / f"{name}.pt")[..., :reference.shape[-1]]
    assert_logits_close(ours, reference)
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir", str(root / name),
            "--save-dir", str(tmp_path / "hf"))
    original = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").state_dict()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").state_dict()
    assert all(torch.equal(back[k], v) for k, v in original.items())


def test_reshard_layout_is_what_pretrain_expects(checkpoints):
    root, _, _ = checkpoints
    iteration = root / "tp1pp2_uneven" / "iter_0000000"
    assert sorted(p.name for p in iteration.iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    args = torch.load(iteration / "mp_rank_00_000" / "model_optim_rng.pt",
                      weights_only=False)["args"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
            args.pipeline_layers, args.use_distributed_optimizer) == (1, 2, [3, 1], False)


def test_trained_checkpoint_exports_to_transformers(checkpoints):
    root, _, tokens = checkpoints
    model = transformers.AutoModelForCausalLM.from_pretrained(root / "trained_hf")
    config = json.loads((root / "trained_hf" / "config.json").read_text())
    assert config["vocab_size"] == 100 and config["architectures"] == ["LlamaForCausalLM"]
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits
    ours = torch.load(root / "trained.pt")[..., :100]
    assert_logits_close(ours, theirs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "trained_hf")
    assert tokenizer("w3 w7")["input_ids"] == [3, 7]

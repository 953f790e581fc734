"""ModelLink's fine-tuning and loading flags, each by its effect: --tokenizer-padding-side left
and --pad-to-multiple-of on the batches the data iterator serves (the loss staying identical
under left padding is checked in the model by tests/finetune_probe.py), --tokenizer-kwargs on
the tokenizer, --full-shuffle-instruction-dataset on the sample order,
--load-checkpoint-loosely on a checkpoint missing one weight, and --jit-compile
reaching torch_npu through the stand-in (tests/npu_stub; its no-op log on CPU is checked by
tests/test_finetune.py's probe launch)."""
import argparse
import importlib.util
import sys

import pytest
import torch
from megatron.core import parallel_state

from conftest import ROOT
from data_helpers import demo  # noqa: F401
from modellink.arguments import ArgumentError, parse_args
from modellink.data.tokenizers import add_tokenizer_arguments, build_tokenizer
from modellink.models.lora import load_weights
from modellink.training.data import datasets as data
from test_finetune import _finetune_args, write_instruction_dataset


def _first_batch(monkeypatch, prefix, *extra):
    monkeypatch.setattr(parallel_state, "get_data_parallel_rank", lambda: 0)
    monkeypatch.setattr(parallel_state, "get_data_parallel_world_size", lambda: 1)
    args = parse_args(_finetune_args(prefix, "--no-shuffle", "--micro-batch-size", "1",
                                     "--global-batch-size", "1", *extra), world_size=1)
    train, _ = data.build_datasets(args, build_tokenizer(args))
    # Row 1: one sample of at most 9 tokens (write_instruction_dataset's odd rows).
    return next(data.build_iterator(train, args, consumed_samples=1)), args


def test_left_padding_and_length_multiple_shape_the_served_batch(tmp_path, monkeypatch):
    prefix = write_instruction_dataset(tmp_path / "sft", count=8, seq_length=32)
    right, _ = _first_batch(monkeypatch, prefix, "--variable-seq-lengths")
    left, args = _first_batch(monkeypatch, prefix, "--variable-seq-lengths",
                              "--tokenizer-padding-side", "left", "--pad-to-multiple-of", "12")
    assert args.pad_to_multiple_of == 12
    assert right["tokens"].shape == (1, 8) and left["tokens"].shape == (1, 12)
    # The same samples, moved to the end of each row: same targets, same token count.
    for row in range(left["tokens"].shape[0]):
        count = int((right["tokens"][row] != 0).sum())  # real tokens are never 0 here
        assert left["tokens"][row, -count:].tolist() == right["tokens"][row, :count].tolist()
        assert left["labels"][row, -count:].tolist() == right["labels"][row, :count].tolist()
    assert left["loss_mask"].sum() == right["loss_mask"].sum()
    assert "attention_mask" not in right and left["tokens"][0, 0] == 0
    mask = left["attention_mask"][0, 0]  # True = masked: the last query never sees padding
    assert mask[-1, 0] and not mask[-1, -1]
    assert left["position_ids"][0, -count:].tolist() == list(range(count))


def test_pad_to_multiple_of_needs_variable_lengths(tmp_path):
    prefix = write_instruction_dataset(tmp_path / "sft", count=8)
    with pytest.raises(ArgumentError, match="--pad-to-multiple-of needs --variable-seq-lengths"):
        parse_args(_finetune_args(prefix, "--pad-to-multiple-of", "16"), world_size=1)
    with pytest.raises(ArgumentError, match="--pad-to-multiple-of must be >= 1"):
        parse_args(_finetune_args(prefix, "--variable-seq-lengths", "--pad-to-multiple-of", "0"),
                   world_size=1)


def test_full_shuffle_mixes_epochs_together(tmp_path):
    prefix = write_instruction_dataset(tmp_path / "sft", count=8)

    def epochs(*extra):  # 32 samples of 8 rows: four epochs
        args = parse_args(_finetune_args(prefix, *extra), world_size=1)
        train, _ = data.build_datasets(args, build_tokenizer(args))
        rows = [tuple(train[i]["input_ids"].tolist()) for i in range(len(train))]
        return [rows[start:start + 8] for start in range(0, len(rows), 8)]

    apart, together = epochs(), epochs("--full-shuffle-instruction-dataset")
    assert all(len(set(epoch)) == 8 for epoch in apart)  # each epoch: every row once
    assert any(len(set(epoch)) < 8 for epoch in together)  # a row again within 8 samples
    assert sorted(sum(together, [])) == sorted(sum(apart, []))  # still four of each


def _tokenizer_args(*argv):
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    return parser.parse_args(list(argv))


def test_tokenizer_kwargs_reach_the_hugging_face_tokenizer(demo):  # noqa: F811
    base = ("--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", demo["tokenizer"])
    plain = build_tokenizer(_tokenizer_args(*base))
    tuned = build_tokenizer(_tokenizer_args(*base, "--tokenizer-kwargs", "add_bos_token", "False",
                                            "model_max_length", "77"))
    assert plain.tokenize("hello")[0] == plain.bos
    assert tuned.tokenize("hello") == plain.tokenize("hello")[1:]  # False, not the string
    assert tuned.hf_tokenizer.model_max_length == 77
    with pytest.raises(ArgumentError, match="--tokenizer-kwargs takes key value pairs"):
        build_tokenizer(_tokenizer_args(*base, "--tokenizer-kwargs", "add_bos_token"))
    with pytest.raises(ArgumentError, match="--tokenizer-kwargs applies to Hugging Face"):
        build_tokenizer(_tokenizer_args("--tokenizer-type", "NullTokenizer", "--vocab-size", "9",
                                        "--tokenizer-kwargs", "a", "1"))


def test_load_checkpoint_loosely_loads_a_checkpoint_missing_one_weight(capsys):
    torch.manual_seed(0)
    saved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = saved.state_dict()
    del state["1.bias"]
    strict = argparse.Namespace(load_checkpoint_loosely=False, lora_modules_to_save=None)
    with pytest.raises(RuntimeError, match="1.bias"):
        load_weights(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)), state,
                     "all", strict)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    kept = model[1].bias.detach().clone()
    load_weights(model, state, "all", argparse.Namespace(load_checkpoint_loosely=True,
                                                          lora_modules_to_save=None))
    assert torch.equal(model[0].weight, saved[0].weight)
    assert torch.equal(model[1].weight, saved[1].weight) and torch.equal(model[1].bias, kept)
    assert "--load-checkpoint-loosely: 1 missing weight(s) left as they were: 1.bias" in \
        capsys.readouterr().err


def test_jit_compile_sets_the_npu_compile_mode(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "torch_npu", ROOT / "tests" / "npu_stub" / "torch_npu" / "__init__.py")
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    monkeypatch.setitem(sys.modules, "torch_npu", stub)
    from modellink.backend import npu

    npu.enable_jit_compile()
    assert stub.calls == [("npu.set_compile_mode", {"jit_compile": True})]


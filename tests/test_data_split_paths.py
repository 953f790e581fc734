"""--train-data-path / --valid-data-path / --test-data-path: each split reads its own blend.

The exact effect: training on A with validation on B gives the losses, train and validation,
of one dataset holding A's documents then B's, divided by --split 50,50,0 (which samples
exactly A's documents for training and B's for validation in the same seeded order). The test
split is evaluated once after training, as Megatron-LM does: on B it gives the loss of the
validation at the same iteration, which sampled the same first batch of B.
"""
import json
import re

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import run_in_one_job
from modellink.arguments import ArgumentError, parse_args
from modellink.data.tokenizers import build_tokenizer
from modellink.training.data.datasets import DataError, build_datasets, check_data_files
from test_finetune import _finetune_args, write_instruction_dataset
from test_pretrain_data import MODEL

RUN = MODEL + ["--train-iters", "4", "--eval-interval", "2", "--eval-iters", "1"]


def _documents(seed: int, count: int = 100) -> list:
    rng = numpy.random.default_rng(seed)
    return [numpy.append(rng.integers(0, 100, int(rng.integers(10, 60))), 100).astype(numpy.int32)
            for _ in range(count)]


def _write(prefix, documents) -> str:
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for document in documents:
        builder.add_document(document, [len(document)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_train_and_validation_read_their_own_data(tmp_path):
    a, b = _documents(seed=1), _documents(seed=2)
    train, valid = _write(tmp_path / "a_text_document", a), _write(tmp_path / "b_text_document", b)
    both = _write(tmp_path / "ab_text_document", a + b)
    runs = [{"args": RUN + ["--train-data-path", train, "--valid-data-path", valid],
             "history": str(tmp_path / "per_split.json")},
            {"args": RUN + ["--data-path", both, "--split", "50,50,0"],
             "history": str(tmp_path / "split.json")},
            {"args": RUN + ["--train-data-path", train, "--valid-data-path", valid,
                            "--test-data-path", valid, "--eval-interval", "4"],
             "history": str(tmp_path / "test.json")}]
    result = run_in_one_job(runs, nproc=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    per_split, split = (json.loads((tmp_path / f"{name}.json").read_text())
                        for name in ("per_split", "split"))
    assert [it for it, _ in per_split["validation"]] == [2, 4]
    assert per_split["loss"] == split["loss"]
    assert per_split["validation"] == split["validation"]
    # Only the last run has a test split: one line, after its one validation at iteration 4.
    tested = re.findall(r"validation loss at iteration (\d+) on test set \| lm loss value: (\S+)",
                        result.stdout)
    (iteration, loss), = json.loads((tmp_path / "test.json").read_text())["validation"]
    assert [(int(it), float(value)) for it, value in tested] == [(4, float(f"{loss:.6E}"))]
    assert iteration == 4


def test_instruction_data_reads_each_split_from_its_own_prefix(tmp_path):
    a = write_instruction_dataset(tmp_path / "a", count=16, seed=1)
    b = write_instruction_dataset(tmp_path / "b", count=16, seed=2)
    argv = [x for x in _finetune_args(a, "--train-iters", "2", "--eval-interval", "1",
                                      "--eval-iters", "1")
            if x not in ("--data-path", a, "--split", "100,0,0")]
    args = parse_args(argv + ["--train-data-path", a, "--valid-data-path", b], world_size=1)
    train, valid = build_datasets(args, build_tokenizer(args))

    def rows(prefix):
        only = parse_args(_finetune_args(prefix, "--no-shuffle"), world_size=1)
        data, _ = build_datasets(only, build_tokenizer(only))
        return {tuple(data[i]["input_ids"]) for i in range(16)}

    served = [{tuple(split[i]["input_ids"]) for i in range(len(split))} for split in (train, valid)]
    assert served[0] <= rows(a) and served[1] <= rows(b)
    assert not served[1] & rows(a)


@pytest.mark.parametrize("extra, message", [
    (["--data-path", "x"], "--train-data-path and --data-path are mutually exclusive"),
    (["--mock-data"], "--train-data-path and --mock-data are mutually exclusive"),
    (["--split", "90,10,0"], "--train-data-path and --split are mutually exclusive"),
])
def test_per_split_paths_do_not_mix_with_one_blend(extra, message):
    with pytest.raises(ArgumentError, match=message):
        parse_args(MODEL + ["--train-data-path", "t"] + extra, world_size=1)


def test_validation_data_alone_is_not_enough():
    with pytest.raises(ArgumentError, match="--valid-data-path needs --train-data-path"):
        parse_args(MODEL + ["--valid-data-path", "v"], world_size=1)


def test_a_missing_file_is_named_at_start_up(tmp_path):
    train = _write(tmp_path / "a_text_document", _documents(seed=1))
    args = parse_args(RUN + ["--train-data-path", "0.5", train, "0.5", train,
                             "--valid-data-path", str(tmp_path / "gone_text_document")],
                      world_size=1)
    with pytest.raises(DataError, match="dataset file not found: .*gone_text_document.bin"):
        check_data_files(args)
    args.valid_data_path = ["0.3", train, train]
    with pytest.raises(DataError, match="--valid-data-path must be PREFIX... or WEIGHT PREFIX"):
        check_data_files(args)

"""Training on Megatron indexed datasets: blends, splits, and clear errors for bad files."""
import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import TINY_LLAMA, run_ranks, train_history

MODEL = [a for a in TINY_LLAMA if a != "--mock-data"] + ["--tokenizer-type", "NullTokenizer"]


def _write_dataset(prefix, seed, documents=200):
    """Documents of a repeating pattern (learnable) with an EOD (id 100) after each."""
    rng = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for _ in range(documents):
        start = int(rng.integers(0, 50))
        length = int(rng.integers(10, 60))
        builder.add_document(numpy.array([(start + i) % 50 for i in range(length)] + [100],
                                         dtype=numpy.int32), [length + 1])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def test_blended_dataset_trains_and_validates(tmp_path):
    a = _write_dataset(tmp_path / "a_text_document", seed=1)
    b = _write_dataset(tmp_path / "b_text_document", seed=2)
    history = train_history(tmp_path, MODEL + [
        "--data-path", "0.7", a, "0.3", b, "--split", "90,10,0", "--train-iters", "20",
        "--eval-interval", "10", "--eval-iters", "2", "--data-cache-path", str(tmp_path / "c"),
        "--tensor-model-parallel-size", "2"], nproc=2)
    assert history["loss"][-1] < history["loss"][0] - 0.5
    assert [it for it, _ in history["validation"]] == [10, 20]


def _error(tmp_path, args):
    result = run_ranks(MODEL + ["--train-iters", "2", "--save", str(tmp_path / "ckpt")] + args, 1)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert not (tmp_path / "ckpt").exists(), "a failed start must not write a checkpoint"
    return errors[0]


def test_missing_dataset_file(tmp_path):
    message = _error(tmp_path, ["--data-path", str(tmp_path / "nothing_text_document")])
    assert "dataset file not found" in message and "nothing_text_document.bin" in message


def test_truncated_dataset(tmp_path):
    prefix = _write_dataset(tmp_path / "t_text_document", seed=3)
    data = (tmp_path / "t_text_document.bin").read_bytes()
    (tmp_path / "t_text_document.bin").write_bytes(data[: len(data) // 2])
    message = _error(tmp_path, ["--data-path", prefix])
    assert "truncated dataset" in message


def test_corrupt_index(tmp_path):
    prefix = _write_dataset(tmp_path / "c_text_document", seed=4)
    (tmp_path / "c_text_document.idx").write_bytes(b"not an index")
    message = _error(tmp_path, ["--data-path", prefix])
    assert "c_text_document.idx" in message


def test_unknown_flag_via_entry_point(tmp_path):
    message = _error(tmp_path, ["--mock-data", "--vocab-size", "100", "--no-such-flag", "1"])
    assert "--no-such-flag" in message


def test_empty_split_is_an_error_not_a_hang(tmp_path):
    prefix = _write_dataset(tmp_path / "s_text_document", seed=5, documents=20)
    message = _error(tmp_path, ["--data-path", prefix, "--split", "99,1,0",
                                "--eval-interval", "1", "--eval-iters", "1"])
    assert "validation split" in message and "empty" in message

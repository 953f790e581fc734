"""preprocess_data.py's ModelLink flags that read through Hugging Face datasets (--cache-dir,
--overwrite-cache, --streaming, --hf-datasets-params, --dataset-dir, --mix-strategy,
--interleave-probs), --n-subs and the vocabulary padding flags: each changes what it should and
nothing else."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from data_helpers import demo, file_bytes, preprocess, read_dataset, write_jsonl  # noqa: F401
from modellink.argument_errors import ArgumentError
from modellink.data.preprocess import run
from modellink.data.preprocess_args import build_parser


def _rows(tag: str, n: int):
    return [{"text": f"{tag} {i} + 1 = {i + 1}"} for i in range(n)]


@pytest.fixture()
def two_inputs(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", _rows("A", 3))
    write_jsonl(folder / "b.jsonl", _rows("B", 5))
    return folder


def _texts(prefix, tokenizer_dir):
    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    return [hf.decode(seq, skip_special_tokens=True) for seq in read_dataset(prefix)]


def _cache_files(cache: Path):
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.arrow")}


def test_cache_dir_holds_the_cache_and_overwrite_cache_rebuilds_it(demo, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    plain = preprocess(demo["pretrain"], tmp_path / "plain", demo["tokenizer"])
    cached = preprocess(demo["pretrain"], tmp_path / "hf", demo["tokenizer"], "--cache-dir", str(cache))
    assert list(file_bytes(plain).values()) == list(file_bytes(cached).values())
    first = _cache_files(cache)
    assert first, "no arrow cache under --cache-dir"
    preprocess(demo["pretrain"], tmp_path / "hf", demo["tokenizer"], "--cache-dir", str(cache), "--overwrite")
    assert _cache_files(cache) == first  # reused
    preprocess(demo["pretrain"], tmp_path / "hf", demo["tokenizer"], "--cache-dir", str(cache), "--overwrite",
               "--overwrite-cache")
    rebuilt = _cache_files(cache)
    assert rebuilt.keys() == first.keys() and all(rebuilt[p] != first[p] for p in first)


def test_streaming_gives_the_same_output_and_writes_no_cache(demo, tmp_path):  # noqa: F811
    cache = tmp_path / "cache"
    plain = preprocess(demo["instruction"], tmp_path / "plain", demo["tokenizer"],
                       "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen")
    streamed = preprocess(demo["instruction"], tmp_path / "streamed", demo["tokenizer"],
                          "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen",
                          "--streaming", "--cache-dir", str(cache), "--workers", "2")
    assert list(file_bytes(plain).values()) == list(file_bytes(streamed).values())
    assert not _cache_files(cache)


def test_hf_datasets_params_reads_with_load_dataset_arguments(demo, tmp_path):  # noqa: F811
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"path": "json", "data_files": [demo["pretrain"]], "split": "train",
                                  "cache_dir": str(tmp_path / "cache")}))
    plain = preprocess(demo["pretrain"], tmp_path / "plain", demo["tokenizer"])
    argv = ["--hf-datasets-params", str(params), "--output-prefix", str(tmp_path / "hf"),
            "--tokenizer-name-or-path", demo["tokenizer"]]
    assert list(file_bytes(plain).values()) == list(file_bytes(run(build_parser().parse_args(argv))).values())
    params.write_text(json.dumps({"path": "json", "data_files": [demo["pretrain"]]}))
    with pytest.raises(ArgumentError, match="names no \"split\"; the splits are train"):
        run(build_parser().parse_args(argv + ["--overwrite"]))


def test_dataset_dir_and_mix_strategies_give_the_expected_samples(demo, tmp_path, two_inputs):  # noqa: F811
    def mixed(name, *flags):
        (prefix,) = preprocess("a.jsonl,b.jsonl", tmp_path / name, demo["tokenizer"],
                               "--dataset-dir", str(two_inputs), *flags)
        return _texts(prefix, demo["tokenizer"])

    a, b = [r["text"] for r in _rows("A", 3)], [r["text"] for r in _rows("B", 5)]
    assert mixed("concat") == a + b
    # Round robin until the first input runs out (under) or until every one has (over, restarting A).
    assert mixed("under", "--mix-strategy", "interleave_under") == [t for pair in zip(a, b) for t in pair]
    assert mixed("over", "--mix-strategy", "interleave_over") == \
        [t for pair in zip(a + a[:2], b) for t in pair]
    drawn = mixed("probs", "--mix-strategy", "interleave_over", "--interleave-probs", "0.9,0.1", "--seed", "3")
    assert set(drawn) == set(a + b) and sum(t in a for t in drawn) > sum(t in b for t in drawn)
    assert drawn == mixed("probs_again", "--mix-strategy", "interleave_over", "--interleave-probs", "0.9,0.1",
                          "--seed", "3")


@pytest.mark.parametrize("flags, message", [
    (["--input", "a", "--mix-strategy", "interleave_under"], "needs several comma-separated --input entries"),
    (["--input", "a,b", "--interleave-probs", "0.5,0.5"], "--interleave-probs needs --mix-strategy interleave_"),
    (["--input", "a,b", "--mix-strategy", "interleave_over", "--interleave-probs", "0.5"],
     "--interleave-probs has 1 values for 2 --input entries"),
    (["--input", "a,b", "--mix-strategy", "interleave_over", "--interleave-probs", "0.5,0.6"],
     "must be non-negative and sum to 1"),
    (["--hf-datasets-params", "p.json", "--streaming"], "put --dataset-dir, --streaming"),
    (["--input", "a", "--hf-datasets-params", "p.json"], "give one"),
    ([], "--input is required"),
])
def test_mixing_flag_errors(demo, tmp_path, flags, message):  # noqa: F811
    argv = flags + ["--output-prefix", str(tmp_path / "out"), "--tokenizer-name-or-path", demo["tokenizer"]]
    with pytest.raises(ArgumentError, match=message):
        run(build_parser().parse_args(argv))


def test_n_subs_processes_in_parallel_with_the_same_output(demo, tmp_path, monkeypatch, caplog):  # noqa: F811
    monkeypatch.setattr("modellink.data.readers.LINE_CHUNK_BYTES", 4096)
    one = preprocess(demo["pretrain"], tmp_path / "one", demo["tokenizer"])
    with caplog.at_level("INFO"):
        two = preprocess(demo["pretrain"], tmp_path / "two", demo["tokenizer"], "--n-subs", "2")
    assert "with 2 worker(s)" in caplog.text
    assert list(file_bytes(one).values()) == list(file_bytes(two).values())
    assert len(read_dataset(two[0])) > 10


def test_vocab_padding_flags_report_the_training_vocabulary(demo, tmp_path, caplog):  # noqa: F811
    vocab = len(AutoTokenizer.from_pretrained(demo["tokenizer"]))
    with caplog.at_level("INFO"):
        preprocess(demo["pretrain"], tmp_path / "a", demo["tokenizer"], "--make-vocab-size-divisible-by", "1000")
        preprocess(demo["pretrain"], tmp_path / "b", demo["tokenizer"], "--pad-vocab-size-to", str(vocab + 3))
    assert f"Vocab size: {vocab} (padded for training: {-(-vocab // 1000) * 1000})" in caplog.text
    assert f"Vocab size: {vocab} (padded for training: {vocab + 3})" in caplog.text
    with pytest.raises(ArgumentError, match=f"--pad-vocab-size-to 2 is below the tokenizer's vocabulary of {vocab}"):
        preprocess(demo["pretrain"], tmp_path / "c", demo["tokenizer"], "--pad-vocab-size-to", "2")
    assert not list(tmp_path.glob("c*"))

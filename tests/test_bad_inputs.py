"""Bad input across the entry points (pretrain_gpt.py, preprocess_data.py, convert_ckpt.py,
inference.py) fails before any work: non-zero exit, exactly one `error:` line naming the flag
or file and the problem, no traceback, and the folder the run was given is byte for byte what it
was (no half-written output, the user's existing data intact).

Every case runs in-process through the entry point's own main, so the table stays fast."""
import contextlib
import io
import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from conftest import TINY_LLAMA
from test_convert_families import save_tiny_hf

MODEL = [a for a in TINY_LLAMA if a != "--mock-data"] + ["--tokenizer-type", "NullTokenizer"]


def _unwritable(root: Path) -> Path:
    """A folder this process cannot write in: permission bits for a normal user; root ignores
    those, but nobody can create files in sysfs."""
    if os.geteuid() != 0:
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        return locked
    return Path("/sys")


def _write_dataset(prefix: Path, documents: int, seed: int = 0) -> str:
    rng = numpy.random.default_rng(seed)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=numpy.int32)
    for _ in range(documents):
        length = int(rng.integers(20, 60))
        builder.add_document(numpy.append(rng.integers(0, 99, length), 100).astype(numpy.int32),
                             [length + 1])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "hf"
    save_tiny_hf("llama2", path)
    return path


@pytest.fixture
def root(tmp_path, hf_checkpoint) -> Path:
    """What a user's folder holds before the bad command: a checkpoint, a dataset, raw text."""
    shutil.copytree(hf_checkpoint, tmp_path / "hf")
    _write_dataset(tmp_path / "corpus_text_document", documents=40)
    (tmp_path / "raw.jsonl").write_text('{"text": "1 2 3 4"}\n' * 20)
    (tmp_path / "notes.txt").write_text("a file where a folder is expected")
    return tmp_path


def _snapshot(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}


# --- how each entry point is run in-process; each returns (exit status, stderr) ---

def _pretrain(argv: List[str]) -> Tuple[int, str]:
    from modellink.errors import run_cli
    from modellink.training.pretrain import pretrain
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_cli(lambda: pretrain(argv))
    return status, err.getvalue()


def _preprocess(argv: List[str]) -> Tuple[int, str]:
    from modellink.data.preprocess import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            status = 0
        except SystemExit as exc:  # argparse exits with 2, main with the message itself
            if isinstance(exc.code, str):
                print(exc.code, file=err)
            status = 1 if isinstance(exc.code, str) else exc.code
    return status, err.getvalue()


def _convert(argv: List[str]) -> Tuple[int, str]:
    from modellink.checkpoint.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    return status, err.getvalue()


def _inference(argv: List[str]) -> Tuple[int, str]:
    from modellink.errors import run_cli
    from modellink.inference.tasks import run
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = run_cli(lambda: run(argv))
    return status, err.getvalue()


# --- the cases: (entry point, argv built from the user's folder, what the error must say) ---

def _train(r: Path, *extra: str) -> List[str]:
    return MODEL + ["--train-iters", "2", "--data-path", str(r / "corpus_text_document"),
                    "--save", str(r / "ckpt"), *extra]


def _raw(r: Path, *extra: str) -> List[str]:
    return ["--input", str(r / "raw.jsonl"), "--output-prefix", str(r / "out"),
            "--tokenizer-type", "NullTokenizer", "--vocab-size", "100", *extra]


def _hf_to_mg(r: Path, save: str, *extra: str) -> List[str]:
    return ["--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(r / "hf"),
            "--save-dir", save, *extra]


def _generate(r: Path, *extra: str) -> List[str]:
    (r / "mg").mkdir(exist_ok=True)
    return MODEL + ["--load", str(r / "mg"), "--task", "greedy", *extra]


def _grow_bin(r: Path) -> None:
    with open(r / "corpus_text_document.bin", "ab") as f:
        f.write(b"\0" * 4096)


def _bin_as_int64(r: Path) -> None:
    path = r / "corpus_text_document.bin"
    path.write_bytes(numpy.fromfile(path, dtype=numpy.int32).astype(numpy.int64).tobytes())


def _lose_idx(r: Path) -> None:
    (r / "corpus_text_document.idx").unlink()


Case = Tuple[Callable, Callable[[Path], List[str]], str]
CASES: Dict[str, Case] = {
    # pretrain_gpt.py: numbers
    "seq-length-0": (_pretrain, lambda r: _train(r, "--seq-length", "0"),
                     "--seq-length must be >= 1, got 0"),
    "train-iters-0": (_pretrain, lambda r: MODEL + ["--train-iters", "0", "--mock-data"],
                      "--train-iters must be >= 1, got 0"),
    "split-abc": (_pretrain, lambda r: _train(r, "--split", "abc"),
                  "--split 'abc' must be up to three comma-separated numbers"),
    "split-four-parts": (_pretrain, lambda r: _train(r, "--split", "90,5,3,2"), "has 4 parts"),
    "split-all-zero": (_pretrain, lambda r: _train(r, "--split", "0,0,0"),
                       "needs non-negative weights with a positive sum"),
    "heads-0": (_pretrain, lambda r: _train(r, "--num-attention-heads", "0"),
                "--num-attention-heads must be >= 1, got 0"),
    "query-groups-0": (_pretrain, lambda r: _train(r, "--num-query-groups", "0"),
                       "--num-query-groups must be >= 1, got 0"),
    "global-batch-0": (_pretrain, lambda r: _train(r, "--global-batch-size", "0"),
                       "--global-batch-size must be >= 1, got 0"),
    "global-batch-not-divisible": (_pretrain, lambda r: _train(r, "--global-batch-size", "7"),
                                   "--global-batch-size 7 is not divisible by --micro-batch-size"),
    "eval-interval-0": (_pretrain, lambda r: _train(r, "--eval-interval", "0"),
                        "--eval-interval must be >= 1, got 0"),
    "log-interval-0": (_pretrain, lambda r: _train(r, "--log-interval", "0"),
                       "--log-interval must be >= 1, got 0"),
    "timeout-0": (_pretrain, lambda r: _train(r, "--distributed-timeout-minutes", "0"),
                  "--distributed-timeout-minutes must be >= 1, got 0"),
    "exit-duration-0": (_pretrain, lambda r: _train(r, "--exit-duration-in-mins", "0"),
                        "--exit-duration-in-mins must be > 0"),
    "vocab-divisor-0": (_pretrain, lambda r: _train(r, "--make-vocab-size-divisible-by", "0"),
                        "--make-vocab-size-divisible-by must be >= 1, got 0"),
    "seed-negative": (_pretrain, lambda r: _train(r, "--seed", "-1"), "--seed must be >= 0"),
    "warmup-fraction": (_pretrain, lambda r: _train(r, "--lr-warmup-fraction", "1.5"),
                        "--lr-warmup-fraction must be in [0, 1], got 1.5"),
    "lr-nan": (_pretrain, lambda r: _train(r, "--lr", "nan"), "--lr must be >= 0, got nan"),
    "num-workers-negative": (_pretrain, lambda r: _train(r, "--num-workers", "-1"),
                             "--num-workers must be >= 0, got -1"),
    # pretrain_gpt.py: paths and data files
    "save-unwritable": (_pretrain, lambda r: _train(r, "--save", str(_unwritable(r) / "ckpt")),
                        "cannot write in"),
    "save-is-a-file": (_pretrain, lambda r: _train(r, "--save", str(r / "notes.txt")),
                       "notes.txt exists and is not a directory"),
    "cache-unwritable": (_pretrain, lambda r: _train(r, "--data-cache-path",
                                                     str(_unwritable(r) / "cache")),
                         "--data-cache-path"),
    "bin-longer-than-idx": (_pretrain, lambda r: _grow_bin(r) or _train(r),
                            "the two files are from different preprocessing runs"),
    "bin-of-another-dtype": (_pretrain, lambda r: _bin_as_int64(r) or _train(r),
                             "corpus_text_document.idx describes"),
    "idx-missing": (_pretrain, lambda r: _lose_idx(r) or _train(r),
                    "dataset file not found: " + "{root}/corpus_text_document.idx"),
    "data-path-odd-weights": (_pretrain, lambda r: _train(r, "--data-path", "0.5",
                                                          str(r / "corpus_text_document"), "0.5"),
                              "--data-path must be PREFIX... or WEIGHT PREFIX pairs"),
    # preprocess_data.py
    "workers-0": (_preprocess, lambda r: _raw(r, "--workers", "0"),
                  "--workers: must be a positive integer, got 0"),
    "pre-seq-length-1": (_preprocess, lambda r: _raw(r, "--seq-length", "1"),
                         "--seq-length must be at least 2"),
    "pack-seed-negative": (_preprocess, lambda r: _raw(
        r, "--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca", "--pack",
        "--seq-length", "16", "--seed", "-1"), "--seed must be >= 0, got -1"),
    "max-samples-0": (_preprocess, lambda r: _raw(r, "--max-samples", "0"),
                      "--max-samples: must be a positive integer, got 0"),
    "vocab-size-0": (_preprocess, lambda r: _raw(r, "--vocab-size", "0"), "--vocab-size"),
    "output-unwritable": (_preprocess, lambda r: _raw(r, "--output-prefix",
                                                       str(_unwritable(r) / "out")),
                          "cannot write in"),
    "output-folder-missing": (_preprocess, lambda r: _raw(r, "--output-prefix",
                                                           str(r / "no" / "out")),
                              "does not exist"),
    "input-missing": (_preprocess, lambda r: _raw(r, "--input", str(r / "gone.jsonl")),
                      "--input {root}/gone.jsonl: no such file or folder"),
    "output-exists": (_preprocess, lambda r: _raw(r, "--output-prefix", str(r / "corpus")),
                      "output files exist: {root}/corpus_text_document.bin"),
    # convert_ckpt.py
    "save-contains-load": (_convert, lambda r: _hf_to_mg(r, str(r), "--overwrite"),
                           "contains --load-dir"),
    "save-inside-load": (_convert, lambda r: _hf_to_mg(r, str(r / "hf" / "mg"), "--overwrite"),
                         "is inside --load-dir"),
    "save-is-load-via-symlink": (_convert, lambda r: (r / "link").symlink_to(r / "hf") or
                                 _hf_to_mg(r, str(r / "link"), "--overwrite"),
                                 "is --load-dir"),
    "save-contains-tokenizer": (_convert, lambda r: _hf_to_mg(
        r, str(r), "--overwrite", "--load-dir", str(r.parent / "hf_source"), "--tokenizer-model",
        str(r / "notes.txt")), "contains --tokenizer-model"),
    "save-dir-unwritable": (_convert, lambda r: _hf_to_mg(r, str(_unwritable(r) / "mg")),
                            "cannot write in"),
    "save-dir-is-a-file": (_convert, lambda r: _hf_to_mg(r, str(r / "notes.txt")),
                           "exists and is not a directory"),
    "convert-vocab-divisor-0": (_convert, lambda r: _hf_to_mg(
        r, str(r / "mg"), "--make-vocab-size-divisible-by", "0"),
        "--make-vocab-size-divisible-by must be >= 1, got 0"),
    "max-shard-size-0": (_convert, lambda r: _hf_to_mg(r, str(r / "mg"), "--max-shard-size",
                                                       "0GB"), "--max-shard-size '0GB'"),
    "target-tp-0": (_convert, lambda r: _hf_to_mg(r, str(r / "mg"),
                                                  "--target-tensor-parallel-size", "0"),
                    "--target-tensor-parallel-size must be >= 1, got 0"),
    # inference.py
    "max-new-tokens-0": (_inference, lambda r: _generate(r, "--max-new-tokens", "0"),
                         "--max-new-tokens must be >= 1, got 0"),
    "temperature-nan": (_inference, lambda r: _generate(r, "--temperature", "nan"),
                        "--temperature must be > 0, got nan"),
    "top-p-negative": (_inference, lambda r: _generate(r, "--top-p", "-0.1"),
                       "--top-p must be in [0, 1]"),
    "num-beams-0": (_inference, lambda r: _generate(r, "--num-beams", "0"),
                    "--num-beams must be >= 1, got 0"),
    "inference-seq-length-0": (_inference, lambda r: _generate(r, "--seq-length", "0"),
                               "--seq-length must be >= 1, got 0"),
    "inference-tp-over-world": (_inference, lambda r: _generate(
        r, "--tensor-model-parallel-size", "3"), "world size 1 is not divisible"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_before_the_work(name, root, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    run, argv, needle = CASES[name]
    argv = argv(root)  # sets the user's folder up as the case needs, before the snapshot
    before = _snapshot(root)
    status, err = run(argv)
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status != 0, err
    assert len(errors) == 1, err
    assert needle.format(root=root) in errors[0], errors[0]
    assert "Traceback" not in err
    assert _snapshot(root) == before


def test_converted_folders_follow_the_umask(root):
    old = os.umask(0o022)
    try:
        status, err = _convert(_hf_to_mg(root, str(root / "mg")))
    finally:
        os.umask(old)
    assert status == 0, err
    assert stat.S_IMODE(os.stat(root / "mg").st_mode) == 0o755
    assert not [p for p in os.listdir(root) if p.endswith(".tmp")]


def test_workers_are_capped_at_what_helps(root, caplog):
    from modellink.data.preprocess import run
    from modellink.data.preprocess_args import build_parser
    with caplog.at_level("INFO"):
        (prefix,) = run(build_parser().parse_args(_raw(root, "--workers", "10000")))
    # One small file is one chunk: one worker, not ten thousand processes.
    assert "--workers 10000 capped to 1" in caplog.text
    assert "20 records read, 20 documents written" in caplog.text


def test_index_cache_is_rebuilt_when_the_corpus_is_rewritten(root, monkeypatch):
    """preprocess_data.py --overwrite writing a larger corpus under the same prefix: the
    sample indices cached for the old one must not be reused."""
    from modellink.arguments import parse_args
    from modellink.data.tokenizers import build_tokenizer
    from modellink.training.data.datasets import build_datasets
    monkeypatch.setenv("WORLD_SIZE", "1")
    prefix = str(root / "corpus_text_document")
    args = parse_args(MODEL + ["--train-iters", "4", "--data-path", prefix, "--split", "100,0,0",
                               "--data-cache-path", str(root / "cache")])
    tokenizer = build_tokenizer(args)
    old, _ = build_datasets(args, tokenizer)
    assert int(old.document_index.max()) < 40
    _write_dataset(Path(prefix), documents=400, seed=1)
    new, _ = build_datasets(args, tokenizer)
    assert int(new.document_index.max()) >= 40  # the new documents are sampled
    assert len([p for p in os.listdir(root / "cache") if p.endswith("description.txt")]) == 2

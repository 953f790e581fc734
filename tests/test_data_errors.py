"""Bad input gets a clear error or a counted skip, never a silent wrong dataset."""

import json
import os

import pytest

from data_helpers import demo, preprocess, read_dataset, write_jsonl  # noqa: F401
from modellink.argument_errors import ArgumentError
from modellink.data.preprocess import main


def _outputs(folder):
    return sorted(os.listdir(folder))


def test_malformed_json_line_is_an_error_with_its_line_number(demo, tmp_path):  # noqa: F811
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "1 + 1 = 2"}\n\n{"text": "2 + 2 = 4"}\n{"text": oops}\n{"text": "fine"}\n')
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=rf"{source}:4: malformed JSON.*--skip-bad-records"):
        preprocess(source, out / "x", demo["tokenizer"])
    assert _outputs(out) == []  # nothing half-written is left behind


def test_line_numbers_are_exact_across_chunks(demo, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr("modellink.data.readers.LINE_CHUNK_BYTES", 64)
    lines = [json.dumps({"text": f"{i} + 1 = {i + 1}"}) for i in range(50)]
    lines[37] = '{"text": '
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{source}:38: malformed JSON"):
        preprocess(source, tmp_path / "x", demo["tokenizer"], "--workers", "2")


def test_skip_bad_records_counts_them(demo, tmp_path, caplog):  # noqa: F811
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "1 + 1 = 2"}\n{"text": oops}\n{"body": "no text"}\n{"text": 5}\n'
                      '{"text": ""}\n{"text": "   "}\n[1, 2]\n{"text": "2 + 2 = 4"}\n')
    with caplog.at_level("INFO"):
        (prefix,) = preprocess(source, tmp_path / "x", demo["tokenizer"], "--skip-bad-records")
    assert len(read_dataset(prefix)) == 2
    assert "8 records read, 2 documents written" in caplog.text
    assert "skipped records: 6" in caplog.text
    assert f"2 x empty document (e.g. {source}:5, {source}:6)" in caplog.text
    assert f"1 x missing key 'text' (e.g. {source}:3)" in caplog.text
    assert f"1 x key 'text' must be a string, got int (e.g. {source}:4)" in caplog.text
    assert f"expected a JSON object, got list (e.g. {source}:7)" in caplog.text
    assert "malformed JSON" in caplog.text


def test_missing_key_is_an_error(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "1 + 1 =", "input": ""}])
    with pytest.raises(ValueError, match=r"in.jsonl:1: missing key 'output'"):
        preprocess(source, tmp_path / "x", demo["tokenizer"], "--handler-name",
                   "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca")


def test_empty_documents_are_counted_not_errors(demo, tmp_path, caplog):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": ""}, {"text": "3 + 3 = 6"}])
    with caplog.at_level("INFO"):
        (prefix,) = preprocess(source, tmp_path / "x", demo["tokenizer"])
    assert len(read_dataset(prefix)) == 1
    assert "1 x empty document" in caplog.text


def test_bad_sharegpt_turn_order_is_an_error(demo, tmp_path):  # noqa: F811
    rows = [{"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "1 + 1 ="}]}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(ValueError, match="in.jsonl:1: turn 0 .* wrong role"):
        preprocess(source, tmp_path / "x", demo["tokenizer"], "--handler-name",
                   "SharegptStyleInstructionHandler", "--prompt-type", "chatml")


@pytest.mark.parametrize("extra,message", [
    (["--handler-name", "NoSuchHandler"], "unknown --handler-name 'NoSuchHandler'; known: GeneralPretrainHandler"),
    (["--handler-name", "AlpacaStyleInstructionHandler"], "AlpacaStyleInstructionHandler needs --prompt-type"),
    (["--prompt-type", "alpaca"], "--prompt-type does not apply to GeneralPretrainHandler"),
    (["--pack", "--seq-length", "8"], "--pack does not apply to GeneralPretrainHandler"),
    (["--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca", "--pack"],
     "--pack needs --seq-length"),
    (["--seed", "3"], "--seed orders packed sequences and seeds --interleave-probs; it needs one of them"),
    (["--keep-newlines"], "--keep-newlines needs --split-sentences"),
    (["--map-keys", '{"prompt": "q"}'], "--map-keys does not apply to GeneralPretrainHandler"),
    (["--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca", "--map-keys", '{"bogus": "q"}'],
     "--map-keys: 'bogus' is not a Alpaca-style column"),
])
def test_flag_misuse_is_a_clear_error(demo, tmp_path, extra, message):  # noqa: F811
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        preprocess(demo["instruction"], tmp_path / "x", demo["tokenizer"], *extra)


def test_unknown_prompt_type_is_rejected_by_the_parser(demo, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        main(["--input", demo["instruction"], "--output-prefix", str(tmp_path / "x"),
              "--tokenizer-name-or-path", demo["tokenizer"], "--handler-name", "AlpacaStyleInstructionHandler",
              "--prompt-type", "nope"])
    assert "--prompt-type: invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("tokenizer_dir,message", [
    ("missing", "no such tokenizer folder"),
    ("garbage", "cannot load a Hugging Face tokenizer"),
])
def test_unreadable_tokenizer(demo, tmp_path, capsys, tokenizer_dir, message):  # noqa: F811
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "tokenizer.json").write_text("{not json")
    with pytest.raises(SystemExit) as exit_info:
        main(["--input", demo["pretrain"], "--output-prefix", str(tmp_path / "x"),
              "--tokenizer-name-or-path", str(tmp_path / tokenizer_dir)])
    assert message in str(exit_info.value)


def test_existing_outputs_are_refused_unless_overwrite(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "1 + 2 = 3"}])
    (prefix,) = preprocess(source, tmp_path / "x", demo["tokenizer"])
    before = open(prefix + ".bin", "rb").read()
    with pytest.raises(ArgumentError, match=r"x_text_document.bin.*--overwrite"):
        preprocess(demo["pretrain"], tmp_path / "x", demo["tokenizer"])
    assert open(prefix + ".bin", "rb").read() == before
    preprocess(demo["pretrain"], tmp_path / "x", demo["tokenizer"], "--overwrite")
    assert len(read_dataset(prefix)) > 1


def test_failure_leaves_no_partial_or_temporary_files(demo, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr("modellink.data.readers.LINE_CHUNK_BYTES", 256)
    rows = [json.dumps({"text": f"{i} + 1 = {i + 1}"}) for i in range(200)] + ["{broken"]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="in.jsonl:201"):
        preprocess(source, out / "x", demo["tokenizer"], "--handler-name", "GeneralPretrainHandler")
    assert _outputs(out) == []


def test_pack_failure_cleans_up(demo, tmp_path):  # noqa: F811
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"instruction": "1 + 1 =", "input": "", "output": "2"}) + "\n{bad\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="in.jsonl:2"):
        preprocess(source, out / "x", demo["tokenizer"], "--handler-name", "AlpacaStyleInstructionHandler",
                   "--prompt-type", "alpaca", "--pack", "--seq-length", "64")
    assert _outputs(out) == []


def test_missing_input_and_output_folder(demo, tmp_path):  # noqa: F811
    with pytest.raises(ArgumentError, match="no such file or folder"):
        preprocess(tmp_path / "nope.jsonl", tmp_path / "x", demo["tokenizer"])
    with pytest.raises(ValueError, match="does not exist"):
        preprocess(demo["pretrain"], tmp_path / "no" / "x", demo["tokenizer"])
    (tmp_path / "data.bin").write_text("")
    with pytest.raises(ValueError, match="unsupported file type"):
        preprocess(tmp_path / "data.bin", tmp_path / "x", demo["tokenizer"])


def test_parquet_without_pyarrow_names_the_package(demo, tmp_path, monkeypatch):  # noqa: F811
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    (tmp_path / "in.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="needs the 'pyarrow' package"):
        preprocess(tmp_path / "in.parquet", tmp_path / "x", demo["tokenizer"])


def test_malformed_json_array_is_an_error(demo, tmp_path):  # noqa: F811
    source = tmp_path / "in.json"
    source.write_text('[\n  {"text": "1 + 1 = 2"},\n  {"text": "2 + 2 = 4"\n  {"text": "x"}\n]\n')
    with pytest.raises(ValueError, match="in.json:3: malformed JSON array"):
        preprocess(source, tmp_path / "x", demo["tokenizer"], "--skip-bad-records")


def test_nothing_to_write_is_an_error(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(ValueError, match="no documents to write: 2 records read, 2 skipped"):
        preprocess(source, tmp_path / "x", demo["tokenizer"])
    assert not [n for n in os.listdir(tmp_path) if n.startswith("x")]


def test_outputs_appear_only_when_complete(demo, tmp_path, monkeypatch):  # noqa: F811
    from modellink.data.writer import DatasetWriter

    seen = []
    publish = DatasetWriter.publish

    def spy(self):
        seen.append(sorted(os.listdir(tmp_path / "out")))
        return publish(self)

    monkeypatch.setattr(DatasetWriter, "publish", spy)
    (tmp_path / "out").mkdir()
    (prefix,) = preprocess(demo["pretrain"], tmp_path / "out" / "x", demo["tokenizer"])
    pid = os.getpid()
    assert seen == [[f"x_text_document.tmp-{pid}.bin", f"x_text_document.tmp-{pid}.idx"]]
    assert _outputs(tmp_path / "out") == ["x_text_document.bin", "x_text_document.idx"]

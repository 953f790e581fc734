"""preprocess_data.py round trips: what megatron-core reads back is exactly what the tokenizer
and template produce, for every handler, with and without packing."""

import json
import os

import numpy as np
import pytest
from transformers import AutoTokenizer

from data_helpers import demo, file_bytes, preprocess, read_dataset, read_documents, write_jsonl  # noqa: F401
from modellink.data.handlers import IGNORE_INDEX
from modellink.data.templates import get_template
from modellink.data.tokenizers import build_tokenizer
from modellink.data.preprocess_args import build_parser

ALPACA = [
    {"instruction": "12 + 7 =", "input": "", "output": "19"},
    {"instruction": "Add the numbers.", "input": "3 + 4 =", "output": "7", "history": [["1 + 1 =", "2"]]},
    {"instruction": "The capital of France is", "input": "", "output": "Paris", "system": "Be brief."},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "2 + 2 ="}, {"from": "gpt", "value": "4"}]},
    {"conversations": [{"from": "system", "value": "You add."}, {"from": "human", "value": "1 + 2 ="},
                       {"from": "gpt", "value": "3"}, {"from": "human", "value": "3 + 3 ="},
                       {"from": "gpt", "value": "6"}]},
]


def _tokenizer(demo):  # noqa: F811
    args = build_parser().parse_args(["--input", "x", "--output-prefix", "x",
                                      "--tokenizer-name-or-path", demo["tokenizer"]])
    return build_tokenizer(args)


def _expected_sample(tokenizer, template_name, messages, system=None):
    turns = get_template(template_name).encode_multiturn(tokenizer, messages, system)
    ids, labels = [], []
    for prompt, response in turns:
        ids += prompt + response
        labels += [IGNORE_INDEX] * len(prompt) + response
    return ids, labels


def test_pretrain_round_trip_matches_hf_tokenizer(demo, tmp_path):  # noqa: F811
    (prefix,) = preprocess(demo["pretrain"], tmp_path / "corpus", demo["tokenizer"], "--append-eod")
    assert prefix == str(tmp_path / "corpus_text_document")
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    texts = [json.loads(line)["text"] for line in open(demo["pretrain"])]
    documents = read_documents(prefix)
    assert len(documents) == len(texts)
    for text, (sequence,) in zip(texts, documents):
        assert sequence.tolist() == hf(text)["input_ids"] + [hf.eos_token_id]
    assert read_dataset(prefix)[0].dtype == np.uint16  # Megatron-LM's optimal dtype for a small vocab


def test_pretrain_multiple_json_keys_and_sentences(demo, tmp_path):  # noqa: F811
    rows = [{"title": "Numbers", "body": "One is small. Two is more!\nThree."},
            {"title": "Facts", "body": "The sky is blue."}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    prefixes = preprocess(source, tmp_path / "out", demo["tokenizer"], "--json-keys", "title", "body",
                          "--split-sentences")
    assert prefixes == [str(tmp_path / "out_title_sentence"), str(tmp_path / "out_body_sentence")]
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    body = read_documents(prefixes[1])
    assert [[s.tolist() for s in doc] for doc in body] == [
        [hf(t)["input_ids"] for t in ("One is small.", "Two is more!", "Three.")],
        [hf("The sky is blue.")["input_ids"]]]
    assert [len(doc) for doc in read_documents(prefixes[0])] == [1, 1]


def test_keep_newlines_keeps_line_breaks(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "First line.\nSecond line."}])
    (prefix,) = preprocess(source, tmp_path / "out", demo["tokenizer"], "--split-sentences", "--keep-newlines")
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    assert [s.tolist() for s in read_documents(prefix)[0]] == [
        hf("First line.\n")["input_ids"], hf("Second line.")["input_ids"]]


@pytest.mark.parametrize("prompt_type", ["alpaca", "qwen", "llama3", "empty"])
def test_alpaca_instruction_round_trip_masks_prompt(demo, tmp_path, prompt_type):  # noqa: F811
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    # As in LLaMA-Factory, history and system columns are read only when mapped.
    prefixes = preprocess(source, tmp_path / "sft", demo["tokenizer"], "--handler-name",
                          "AlpacaStyleInstructionHandler", "--prompt-type", prompt_type, "--append-eod",
                          "--map-keys", '{"history": "history", "system": "system"}')
    assert prefixes == [str(tmp_path / f"sft_packed_{k}_document") for k in ("input_ids", "attention_mask", "labels")]
    ids, mask, labels = (read_dataset(p) for p in prefixes)
    tokenizer = _tokenizer(demo)
    conversations = [
        ([{"role": "user", "content": "12 + 7 ="}, {"role": "assistant", "content": "19"}], None),
        ([{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": "2"},
          {"role": "user", "content": "Add the numbers.\n3 + 4 ="}, {"role": "assistant", "content": "7"}], None),
        ([{"role": "user", "content": "The capital of France is"}, {"role": "assistant", "content": "Paris"}],
         "Be brief."),
    ]
    for i, (messages, system) in enumerate(conversations):
        expected_ids, expected_labels = _expected_sample(tokenizer, prompt_type, messages, system)
        assert ids[i].tolist() == expected_ids + [tokenizer.eod]
        assert labels[i].tolist() == expected_labels + [tokenizer.eod]
        assert mask[i].tolist() == [1] * len(ids[i])
    # Only response tokens are trained on: the unmasked text is exactly the answers.
    final = tokenizer.detokenize([t for t in labels[0].tolist() if t != IGNORE_INDEX])
    assert final.startswith("19")
    assert "12 + 7" not in final


def test_rendered_text_is_the_template_text(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA[:1])
    prefixes = preprocess(source, tmp_path / "sft", demo["tokenizer"], "--handler-name",
                          "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca")
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    ids, labels = read_dataset(prefixes[0])[0], read_dataset(prefixes[2])[0]
    assert hf.decode(ids) == ("Below is an instruction that describes a task. Write a response that "
                              "appropriately completes the request.\n\n### Instruction:\n12 + 7 =\n\n"
                              "### Response:\n19</s>")
    assert hf.decode([t for t in labels if t != IGNORE_INDEX]) == "19</s>"


def test_sharegpt_instruction_round_trip(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "sharegpt.jsonl", SHAREGPT)
    prefixes = preprocess(source, tmp_path / "sft", demo["tokenizer"], "--handler-name",
                          "SharegptStyleInstructionHandler", "--prompt-type", "chatml")
    ids, _, labels = (read_dataset(p) for p in prefixes)
    tokenizer = _tokenizer(demo)
    expected_ids, expected_labels = _expected_sample(
        tokenizer, "chatml", [{"role": "user", "content": "1 + 2 ="}, {"role": "assistant", "content": "3"},
                              {"role": "user", "content": "3 + 3 ="}, {"role": "assistant", "content": "6"}],
        "You add.")
    assert ids[1].tolist() == expected_ids
    assert labels[1].tolist() == expected_labels
    # Both answers are trained on, each with its end marker; nothing else is.
    trained = tokenizer.detokenize([t for t in labels[1].tolist() if t != IGNORE_INDEX])
    assert trained == "3<|im_end|>6<|im_end|>"


def test_sharegpt_map_keys(demo, tmp_path):  # noqa: F811
    rows = [{"turns": [{"role": "user", "content": "5 + 5 ="}, {"role": "assistant", "content": "10"}]}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    map_keys = json.dumps({"messages": "turns", "tags": {"role_tag": "role", "content_tag": "content",
                                                         "user_tag": "user", "assistant_tag": "assistant"}})
    prefixes = preprocess(source, tmp_path / "sft", demo["tokenizer"], "--handler-name",
                          "SharegptStyleInstructionHandler", "--prompt-type", "empty", "--map-keys", map_keys)
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    assert read_dataset(prefixes[0])[0].tolist() == hf.encode("5 + 5 =", add_special_tokens=False) + \
        hf.encode("10", add_special_tokens=False)


def test_general_instruction_handler_uses_modellink_prompt(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "Sum", "input": "1 + 1 =", "output": "2"}])
    prefixes = preprocess(source, tmp_path / "sft", demo["tokenizer"], "--handler-name", "GeneralInstructionHandler")
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    ids, labels = read_dataset(prefixes[0])[0].tolist(), read_dataset(prefixes[2])[0].tolist()
    assert hf.decode(ids).startswith("<s>\nBelow is an instruction")
    assert hf.decode(ids).endswith("### Instruction:\nSum\n1 + 1 =\n### Response:\n2\n")
    assert hf.decode([t for t in labels if t != IGNORE_INDEX]) == "2\n"


@pytest.mark.parametrize("handler,rows", [
    ("AlpacaStylePairwiseHandler", [{"instruction": "2 + 3 =", "input": "", "chosen": "5", "rejected": "6"}]),
    ("SharegptStylePairwiseHandler", [{"conversations": [{"from": "human", "value": "2 + 3 ="}],
                                       "chosen": {"from": "gpt", "value": "5"},
                                       "rejected": {"from": "gpt", "value": "6"}}]),
])
def test_pairwise_round_trip(demo, tmp_path, handler, rows):  # noqa: F811
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    prefixes = preprocess(source, tmp_path / "rm", demo["tokenizer"], "--handler-name", handler,
                          "--prompt-type", "default")
    keys = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    assert prefixes == [str(tmp_path / f"rm_packed_{k}_document") for k in keys]
    data = {k: read_dataset(p)[0].tolist() for k, p in zip(keys, prefixes)}
    tokenizer = _tokenizer(demo)
    for name, answer in (("chosen", "5"), ("rejected", "6")):
        ids, labels = _expected_sample(tokenizer, "default", [{"role": "user", "content": "2 + 3 ="},
                                                              {"role": "assistant", "content": answer}])
        assert data[f"{name}_input_ids"] == ids
        assert data[f"{name}_labels"] == labels
        assert tokenizer.detokenize([t for t in labels if t != IGNORE_INDEX]) == answer + "</s>"


def test_pack_fills_sequences_without_splitting_samples(demo, tmp_path):  # noqa: F811
    seq_length = 48
    prefixes = preprocess(demo["instruction"], tmp_path / "sft", demo["tokenizer"], "--handler-name",
                          "AlpacaStyleInstructionHandler", "--prompt-type", "empty", "--append-eod",
                          "--pack", "--seq-length", str(seq_length))
    unpacked = preprocess(demo["instruction"], tmp_path / "plain", demo["tokenizer"], "--handler-name",
                          "AlpacaStyleInstructionHandler", "--prompt-type", "empty", "--append-eod")
    ids, mask, labels = (read_dataset(p) for p in prefixes)
    samples = sorted((tuple(i), tuple(lab)) for i, lab in zip(read_dataset(unpacked[0]), read_dataset(unpacked[2])))
    pad = _tokenizer(demo).pad
    recovered = []
    for seq_ids, seq_mask, seq_labels in zip(ids, mask, labels):
        assert len(seq_ids) == len(seq_mask) == len(seq_labels) == seq_length
        segments = seq_mask.tolist()
        # Segment ids count up from 1 in runs, then padding is 0 to the end.
        real = [s for s in segments if s]
        assert real == sorted(real) and set(real) == set(range(1, max(real) + 1))
        assert all(s == 0 for s in segments[len(real):]) and len(real) < seq_length
        assert set(seq_ids[len(real):].tolist()) <= {pad}
        assert set(seq_labels[len(real):].tolist()) <= {IGNORE_INDEX}
        for segment in range(1, max(real) + 1):
            where = np.flatnonzero(seq_mask == segment)
            recovered.append((tuple(seq_ids[where]), tuple(seq_labels[where])))
    assert sorted(recovered) == samples  # every sample exactly once, whole
    assert len(ids) < len(samples) / 2  # and packing did pack


def test_pack_seed_orders_packs(demo, tmp_path):  # noqa: F811
    common = ["--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "empty", "--pack",
              "--seq-length", "40"]
    a = preprocess(demo["instruction"], tmp_path / "a", demo["tokenizer"], *common, "--seed", "1")
    b = preprocess(demo["instruction"], tmp_path / "b", demo["tokenizer"], *common, "--seed", "1")
    c = preprocess(demo["instruction"], tmp_path / "c", demo["tokenizer"], *common, "--seed", "2")
    assert list(file_bytes(a).values()) == list(file_bytes(b).values())
    seqs_a, seqs_c = read_dataset(a[0]), read_dataset(c[0])
    assert [s.tolist() for s in seqs_a] != [s.tolist() for s in seqs_c]
    assert sorted(s.tolist() for s in seqs_a) == sorted(s.tolist() for s in seqs_c)


@pytest.mark.parametrize("handler_args", [
    [],
    ["--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "qwen", "--pack", "--seq-length", "160"],
])
def test_worker_count_does_not_change_output(demo, tmp_path, monkeypatch, handler_args):  # noqa: F811
    monkeypatch.setattr("modellink.data.readers.LINE_CHUNK_BYTES", 4096)  # many chunks, out of order
    source = demo["instruction"] if handler_args else demo["pretrain"]
    one = preprocess(source, tmp_path / "one", demo["tokenizer"], "--workers", "1", *handler_args)
    two = preprocess(source, tmp_path / "two", demo["tokenizer"], "--workers", "2", *handler_args)
    assert list(file_bytes(one).values()) == list(file_bytes(two).values())
    assert len(read_dataset(one[0])) > 10


def test_seq_length_skips_long_samples(demo, tmp_path, caplog):  # noqa: F811
    rows = [{"text": "1 + 1 = 2"}, {"text": " ".join(["The opposite of hot is cold."] * 20)}]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    with caplog.at_level("INFO"):
        (prefix,) = preprocess(source, tmp_path / "out", demo["tokenizer"], "--seq-length", "32")
    assert len(read_dataset(prefix)) == 1
    assert "1 x too long for --seq-length (e.g. " + str(source) + ":2)" in caplog.text


def test_max_samples(demo, tmp_path):  # noqa: F811
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"{i} + 1 = {i + 1}"} for i in range(30)])
    (prefix,) = preprocess(source, tmp_path / "out", demo["tokenizer"], "--max-samples", "7")
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    assert [s.tolist() for s in read_dataset(prefix)] == [hf(f"{i} + 1 = {i + 1}")["input_ids"] for i in range(7)]


def test_progress_and_summary_are_logged(demo, tmp_path, caplog):  # noqa: F811
    with caplog.at_level("INFO"):
        preprocess(demo["pretrain"], tmp_path / "out", demo["tokenizer"], "--log-interval", "10")
    assert "docs/s" in caplog.text and "MB/s" in caplog.text and "ETA" in caplog.text
    assert "documents written" in caplog.text and "tokens [text]:" in caplog.text
    assert "skipped records: 0" in caplog.text


def test_input_formats_give_the_same_dataset(demo, tmp_path):  # noqa: F811
    rows = [{"text": "3 + 4 = 7"}, {"text": "A cat says meow."}, {"text": "9 - 2 = 7"}]
    write_jsonl(tmp_path / "a.jsonl", rows)
    (tmp_path / "b.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "c.txt").write_text("".join(r["text"] + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("text,other\n" + "".join(f'"{r["text"]}",x\n' for r in rows))
    expected = None
    for name in ("a.jsonl", "b.json", "c.txt", "d.csv"):
        (prefix,) = preprocess(tmp_path / name, tmp_path / f"out_{name}", demo["tokenizer"])
        got = [s.tolist() for s in read_dataset(prefix)]
        expected = expected or got
        assert got == expected and len(got) == 3
    # A folder is read file by file in name order.
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "1.jsonl", rows[:2])
    write_jsonl(folder / "2.jsonl", rows[2:])
    (prefix,) = preprocess(folder, tmp_path / "out_folder", demo["tokenizer"])
    assert [s.tolist() for s in read_dataset(prefix)] == expected


def test_parquet_and_arrow_inputs(demo, tmp_path):  # noqa: F811
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": ["3 + 4 = 7", "A cat says meow."]})
    pq.write_table(table, tmp_path / "in.parquet")
    # Arrow input comes in both IPC flavours: the stream (what `datasets` caches) and the file.
    for name, new in (("stream.arrow", pa.ipc.new_stream), ("file.arrow", pa.ipc.new_file)):
        with pa.OSFile(str(tmp_path / name), "wb") as sink, new(sink, table.schema) as writer:
            writer.write_table(table)
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    for name in ("in.parquet", "stream.arrow", "file.arrow"):
        (prefix,) = preprocess(tmp_path / name, tmp_path / f"out_{name}", demo["tokenizer"])
        assert [s.tolist() for s in read_dataset(prefix)] == [hf(t)["input_ids"] for t in table["text"].to_pylist()]


def test_merge_group_keys(demo, tmp_path):  # noqa: F811
    parts = tmp_path / "parts"
    parts.mkdir()
    rows = [json.loads(line) for line in open(demo["instruction"])][:40]
    args = ["--handler-name", "AlpacaStyleInstructionHandler", "--prompt-type", "alpaca"]
    whole = preprocess(write_jsonl(tmp_path / "all.jsonl", rows), tmp_path / "whole", demo["tokenizer"], *args)
    preprocess(write_jsonl(tmp_path / "p1.jsonl", rows[:25]), parts / "part1", demo["tokenizer"], *args)
    preprocess(write_jsonl(tmp_path / "p2.jsonl", rows[25:]), parts / "part2", demo["tokenizer"], *args)
    keys = ["packed_input_ids_document", "packed_attention_mask_document", "packed_labels_document"]
    merged = preprocess(parts, parts / "merged", demo["tokenizer"], "--merge-group-keys", *keys)
    assert merged == [str(parts / f"merged_{k}") for k in keys]
    assert list(file_bytes(merged).values()) == list(file_bytes(whole).values())
    # Re-running into the same folder skips its own earlier output when overwriting.
    again = preprocess(parts, parts / "merged", demo["tokenizer"], "--merge-group-keys", *keys, "--overwrite")
    assert list(file_bytes(again).values()) == list(file_bytes(whole).values())


def test_entry_script_runs(demo, tmp_path):  # noqa: F811
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, os.path.join(root, "preprocess_data.py"), "--input", demo["pretrain"],
         "--output-prefix", str(tmp_path / "cli"), "--tokenizer-type", "PretrainedFromHF",
         "--tokenizer-name-or-path", demo["tokenizer"], "--workers", "2", "--append-eod"],
        capture_output=True, text=True, cwd=root, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "cli_text_document.bin") and os.path.exists(tmp_path / "cli_text_document.idx")
    assert "documents written" in result.stderr

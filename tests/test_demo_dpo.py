"""The demo's DPO step: its preference pairs are the right answer against a plausible mistake,
preprocessing scores exactly the answer tokens, and `evaluation.py --task preference` counts
the pairs a model prefers as transformers' own log-probabilities say it should."""
import json

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
from transformers import AutoTokenizer

from data_helpers import demo, preprocess, read_dataset  # noqa: F401 (fixture)
from modellink.data.demo import generate_demo
from modellink.data.handlers import IGNORE_INDEX
from modellink.errors import run_cli
from test_inference_generate import VOCAB, single_process_env, tiny  # noqa: F401 (fixture)

SIDES = ("chosen", "rejected")


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _columnwise(a: int, b: int, digit) -> int:
    """Each decimal column on its own, with nothing carried or borrowed between them."""
    columns = zip(str(a).zfill(2), str(b).zfill(2))
    return int("".join(str(digit(int(x), int(y))) for x, y in columns))


def _kind_of_mistake(a: int, op: str, b: int, right: int, wrong: int) -> str:
    if op == "+" and wrong == _columnwise(a, b, lambda x, y: (x + y) % 10) != right:
        return "carry forgotten"
    if op == "-" and wrong == _columnwise(a, b, lambda x, y: abs(x - y)) != right:
        return "smaller digit from the larger"
    r, w = str(right), str(wrong)
    differing = [(x, y) for x, y in zip(r, w) if x != y]
    assert len(r) == len(w) and len(differing) == 1, (a, op, b, right, wrong)
    assert abs(int(differing[0][0]) - int(differing[0][1])) == 1, (a, op, b, right, wrong)
    return "one digit off by one"


def test_demo_pairs_prefer_the_right_answer_to_a_plausible_mistake(tmp_path):
    paths = generate_demo(str(tmp_path / "demo"), num_train=100, seed=11)
    train, test = _rows(paths["pairs_train"]), _rows(paths["pairs_test"])
    assert len(train) == 1000 and len(test) == 200
    kinds = set()
    for pair in train + test:
        assert set(pair) == {"instruction", "input", "chosen", "rejected"} and pair["input"] == ""
        a, op, b, equals = pair["instruction"].split()
        a, b = int(a), int(b)
        right = a + b if op == "+" else a - b
        wrong = int(pair["rejected"])
        assert equals == "=" and int(pair["chosen"]) == right and 0 <= wrong != right
        kinds.add(_kind_of_mistake(a, op, b, right, wrong))
    assert kinds == {"carry forgotten", "smaller digit from the larger", "one digit off by one"}
    # The held-out pairs ask exactly the held-out questions, which training never shows.
    questions = {r["question"] for r in _rows(paths["test"])}
    assert [p["instruction"] for p in test] == [r["question"] for r in _rows(paths["test"])]
    seen = {r["instruction"] for r in _rows(paths["instruction"])}
    assert not (seen | {p["instruction"] for p in train}) & questions


def test_preprocessed_demo_pairs_score_the_answer_tokens(demo, tmp_path):  # noqa: F811
    prefixes = preprocess(demo["pairs_test"], tmp_path / "pairs", demo["tokenizer"],
                          "--handler-name", "AlpacaStylePairwiseHandler", "--prompt-type", "empty",
                          "--append-eod")
    data = {key: read_dataset(prefix) for key, prefix in
            zip([f"{s}_{k}" for s in SIDES for k in ("input_ids", "labels")], prefixes)}
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    for number, pair in enumerate(_rows(demo["pairs_test"])[:20]):
        for side in SIDES:
            ids, labels = data[f"{side}_input_ids"][number], data[f"{side}_labels"][number]
            scored = labels != IGNORE_INDEX
            assert hf.decode(ids[~scored], skip_special_tokens=True).strip() == pair["instruction"]
            assert hf.decode(ids[scored], skip_special_tokens=True).strip() == pair[side]


def _pairwise_dataset(prefix: str, pairs: int) -> list:
    """Random prompts and responses of several lengths (so batches pad); returns each pair's
    (input_ids, labels) rows, chosen then rejected."""
    rng = numpy.random.default_rng(5)
    builders = {f"{s}_{k}": IndexedDatasetBuilder(f"{prefix}_packed_{s}_{k}_document.bin",
                                                  dtype=numpy.int32)
                for s in SIDES for k in ("input_ids", "labels")}
    rows = []
    for _ in range(pairs):
        prompt = rng.integers(3, VOCAB, size=rng.integers(2, 7))
        pair = []
        for side in SIDES:
            response = numpy.append(rng.integers(3, VOCAB, size=rng.integers(1, 4)), 2)
            ids = numpy.concatenate([prompt, response]).astype(numpy.int32)
            labels = numpy.concatenate([numpy.full(len(prompt), IGNORE_INDEX), response])
            for key, row in (("input_ids", ids), ("labels", labels.astype(numpy.int32))):
                builders[f"{side}_{key}"].add_document(row, [len(row)])
            pair.append((ids, labels))
        rows.append(pair)
    for key, builder in builders.items():
        builder.finalize(f"{prefix}_packed_{key}_document.idx")
    return rows


def _transformers_logp(hf, ids: numpy.ndarray, labels: numpy.ndarray) -> float:
    """transformers' mean loss over the labelled next tokens, times their count."""
    labels = torch.tensor(labels, dtype=torch.long)[None]
    with torch.no_grad():
        loss = hf(input_ids=torch.tensor(ids, dtype=torch.long)[None], labels=labels).loss
    return -loss.item() * int((labels[0, 1:] != IGNORE_INDEX).sum())


def test_preference_accuracy_matches_transformers(tiny, tmp_path):  # noqa: F811
    from modellink.evaluation.runner import run
    hf, argv, _ = tiny
    prefix = str(tmp_path / "pairs")
    pairs = _pairwise_dataset(prefix, 13)
    out = tmp_path / "results.json"
    with single_process_env():
        result, = run(argv + ["--task", "preference", "--data-path", prefix,
                              "--evaluation-batch-size", "4", "--eval-output", str(out)])
    margins = [_transformers_logp(hf, *chosen) - _transformers_logp(hf, *rejected)
               for chosen, rejected in pairs]
    expected = sum(m > 0 for m in margins)
    assert 0 < expected < len(pairs)  # both outcomes occur, so a swapped side would show
    assert (result.correct, result.total) == (expected, len(pairs))
    assert result.extra["mean logp margin"] == pytest.approx(numpy.mean(margins), abs=1e-4)
    assert json.loads(out.read_text())["preference"]["total"]["correct"] == expected


@pytest.mark.parametrize("extra,message", [
    (["--task", "preference"], "--task preference needs --data-path"),
    (["--task", "preference", "--data-path", "{tmp}/missing"], "{tmp}/missing"),
])
def test_bad_preference_input_is_one_line(tiny, tmp_path, capsys, extra, message):  # noqa: F811
    from modellink.evaluation.runner import run
    _, argv, _ = tiny
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with single_process_env():
        assert run_cli(lambda: run(argv + extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message.replace(
        "{tmp}", str(tmp_path)) in err[0]

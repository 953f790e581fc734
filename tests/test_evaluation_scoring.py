"""Benchmark scoring on files the test writes in each benchmark's published layout, with fake
models: one that always answers right scores 100%, one that always answers "A" (the first
choice) scores exactly the share of questions whose answer is "A"; HumanEval passes a correct
solution and fails an infinite loop within its time limit."""
import csv
import json
import time

import pytest

from modellink.evaluation.benchmarks import load_questions
from modellink.evaluation.questions import BenchmarkLayoutError
from modellink.evaluation.scoring import score

ANSWERS = "ABCDAABD"  # 3 of 8 are A (plus the dev rows, which are never scored)


class Oracle:
    """Knows the answer to every scored question (found by its text inside the prompt)."""
    chat = False

    def __init__(self, answers):
        self.answers = answers  # question text -> correct label / reply

    def _answer(self, prompt):
        return next(a for q, a in self.answers.items() if q in prompt)

    def loglikelihood(self, requests):
        return [0.0 if cont.strip() == self._answer(ctx) else -1.0 for ctx, cont in requests]

    def generate(self, prompts, max_new_tokens):
        return [self._answer(p) for p in prompts]


class AlwaysA:
    """Prefers the first choice ("A", or "yes" for BoolQ) and writes "A"."""
    chat = False

    def loglikelihood(self, requests):
        return [0.0 if cont.strip() in ("A", "yes") else -1.0 for _, cont in requests]

    def generate(self, prompts, max_new_tokens):
        return ["A" for _ in prompts]


class ChatAlwaysA(AlwaysA):
    chat = True

    def generate(self, prompts, max_new_tokens):
        return ["The answer is A." for _ in prompts]


def _csv(path, rows, header=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_mmlu(root):
    answers = {}
    for s, subject in enumerate(("algebra", "anatomy")):
        rows = []
        for i, letter in enumerate(ANSWERS):
            question = f"mmlu {subject} question {i}?"
            rows.append([question, "w", "x", "y", "z", letter])
            answers[question] = letter
        _csv(root / "data" / "test" / f"{subject}_test.csv", rows)
        _csv(root / "data" / "dev" / f"{subject}_dev.csv",
             [[f"dev {subject} {i}", "w", "x", "y", "z", "B"] for i in range(5)])
    return root / "data", answers


def write_ceval(root):
    header = ["id", "question", "A", "B", "C", "D", "answer"]
    rows = [[i, f"ceval question {i}", "w", "x", "y", "z", a] for i, a in enumerate(ANSWERS)]
    _csv(root / "val" / "law_val.csv", rows, header)
    _csv(root / "test" / "law_test.csv", [r[:6] for r in rows], header[:6])  # no answers
    _csv(root / "dev" / "law_dev.csv", [["0", "dev only", "w", "x", "y", "z", "C", "e"]],
         header + ["explanation"])
    return root, {r[1]: r[6] for r in rows}


def write_agieval(root):
    records = [{"passage": None, "question": f"agieval question {i}",
                "options": ["(A)w", "(B)x", "(C)y", "(D)z"], "label": a}
               for i, a in enumerate(ANSWERS)]
    _jsonl(root / "data" / "v1" / "lsat-ar.jsonl", records)
    _jsonl(root / "data" / "v1" / "math.jsonl", [{"question": "1+1", "answer": "2"}])  # cloze
    return root, {r["question"]: r["label"] for r in records}


def write_boolq(root):
    records = [{"question": f"is boolq {i} true", "passage": "p", "title": "t",
                "answer": a == "A"} for i, a in enumerate(ANSWERS)]
    _jsonl(root / "dev.jsonl", records)
    return root, {r["question"]: "yes" if r["answer"] else "no" for r in records}


@pytest.mark.parametrize("task,writer", [("mmlu", write_mmlu), ("ceval", write_ceval),
                                         ("agieval", write_agieval), ("boolq", write_boolq)])
def test_choice_benchmarks(tmp_path, task, writer):
    path, answers = writer(tmp_path)
    questions = load_questions(task, str(path))
    assert len(questions) == len(answers)
    right = score(task, Oracle(answers), questions, batch_size=3)
    assert (right.correct, right.total) == (len(answers), len(answers))
    share = sum(a in ("A", "yes") for a in answers.values())
    assert score(task, AlwaysA(), questions).correct == share
    assert score(task, ChatAlwaysA(), questions).correct == (share if task != "boolq" else 0)
    table = right.table()
    assert table.splitlines()[-1].split() == ["total", str(len(answers)), str(len(answers)),
                                              "100.00%"]


def test_mmlu_prompt_is_five_shot_and_limits_apply(tmp_path):
    path, _ = write_mmlu(tmp_path)
    questions = load_questions("mmlu", str(path / "test"), max_samples=2)
    assert [q.subject for q in questions] == ["algebra", "algebra", "anatomy", "anatomy"]
    prompt = questions[0].prompt
    assert prompt.startswith("The following are multiple choice questions (with answers) "
                             "about algebra.")
    assert prompt.count("Answer: B") == 5 and prompt.endswith("D. z\nAnswer:")
    custom = load_questions("mmlu", str(path), template="{question}\nReply:")[0].prompt
    assert custom == "mmlu algebra question 0?\nA. w\nB. x\nC. y\nD. z\nReply:"


def test_gsm8k_and_bbh(tmp_path):
    _jsonl(tmp_path / "gsm8k" / "test.jsonl",
           [{"question": f"gsm q{i}", "answer": f"work\n#### {n}"}
            for i, n in enumerate(["72", "1,000", "5"])])
    _jsonl(tmp_path / "gsm8k" / "train.jsonl", [{"question": "shot", "answer": "#### 1"}])
    questions = load_questions("gsm8k", str(tmp_path / "gsm8k"))
    assert questions[1].reference == "1000" and "Question: shot" in questions[0].prompt
    oracle = Oracle({f"gsm q{i}": f"so it is {n}.\n\nQuestion: next" for i, n in
                     enumerate(["72", "1,000", "5"])})
    assert score("gsm8k", oracle, questions).correct == 3
    assert score("gsm8k", AlwaysA(), questions).correct == 0

    (tmp_path / "bbh" / "bbh").mkdir(parents=True)
    targets = ["(A)", "False", "(A)", "7"]
    (tmp_path / "bbh" / "bbh" / "logic.json").write_text(json.dumps(
        {"examples": [{"input": f"bbh q{i}", "target": t} for i, t in enumerate(targets)]}))
    (tmp_path / "bbh" / "cot-prompts").mkdir()
    (tmp_path / "bbh" / "cot-prompts" / "logic.txt").write_text(
        "canary\n-----\nQ: shot\nA: So the answer is (B).")
    questions = load_questions("bbh", str(tmp_path / "bbh"))
    assert questions[0].prompt.startswith("Q: shot") and questions[0].prompt.endswith("bbh q0\nA:")
    oracle = Oracle({f"bbh q{i}": f"Let's think. So the answer is {t}.\nQ: more"
                     for i, t in enumerate(targets)})
    assert score("bbh", oracle, questions).correct == 4
    assert score("bbh", Oracle({f"bbh q{i}": "(A)" for i in range(4)}), questions).correct == 2


def test_human_eval_runs_code_in_a_subprocess_with_a_time_limit(tmp_path):
    problems = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}(x):\n",
                 "canonical_solution": "    return x + 1\n", "entry_point": f"f{i}",
                 "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
                for i in range(2)]
    _jsonl(tmp_path / "HumanEval.jsonl", problems)
    questions = load_questions("human_eval", str(tmp_path))
    solutions = {"def f0(x)": "    return x + 1\n\ndef other():\n    pass\n",
                 "def f1(x)": "    while True:\n        pass\n"}
    start = time.monotonic()
    result = score("human_eval", Oracle(solutions), questions, timeout=2.0)
    assert result.correct == 1 and result.total == 2
    assert time.monotonic() - start < 20  # escapes are tests/test_evaluation_sandbox.py's


@pytest.mark.parametrize("task", ["mmlu", "ceval", "agieval", "boolq", "gsm8k", "bbh",
                                  "human_eval"])
def test_wrong_layout_is_a_clear_error(tmp_path, task):
    (tmp_path / "notes.txt").write_text("not a benchmark")
    with pytest.raises(BenchmarkLayoutError, match="--task-data-path .*layout"):
        load_questions(task, str(tmp_path))


def test_malformed_rows_name_the_file(tmp_path):
    _csv(tmp_path / "test" / "x_test.csv", [["q", "a", "b"]])
    with pytest.raises(BenchmarkLayoutError, match=r"x_test.csv:1: expected 6 columns"):
        load_questions("mmlu", str(tmp_path))

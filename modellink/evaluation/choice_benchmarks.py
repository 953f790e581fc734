"""Multiple-choice benchmarks in their published layouts: MMLU, C-Eval, AGIEval, BoolQ.

MMLU    data/{dev,val,test}/<subject>_{dev,val,test}.csv, no header:
        question, A, B, C, D, answer; 5-shot from dev, scored on test.
C-Eval  {dev,val,test}/<subject>_{dev,val,test}.csv with header id,question,A,B,C,D,answer
        (test has no answers, so val is scored); 5-shot from dev.
AGIEval data/v1/<task>.jsonl: passage, question, options ["(A)...", ...], label; cloze tasks
        (answer, no options) belong to the generation side and are skipped here.
BoolQ   dev.jsonl (or val.jsonl): passage, question, answer|label true/false.

`--task-data-path` may name the benchmark folder or the split folder itself.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from modellink.evaluation.questions import (
    BenchmarkLayoutError,
    ChoiceQuestion,
    files_with_suffix,
    fill_template,
    limit,
    read_csv,
    read_jsonl,
)

LETTERS = ("A", "B", "C", "D")
SHOTS = 5
HEADERS = {
    "en": "The following are multiple choice questions (with answers) about {subject}.\n\n",
    "zh": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
}
ANSWER_WORD = {"en": "Answer:", "zh": "答案："}


def _split_dirs(path: str, split: str) -> Tuple[str, str]:
    """(folder of `split`, folder of dev) for a benchmark root, its data/ or a split folder."""
    for root in (path, os.path.join(path, "data")):
        if os.path.isdir(os.path.join(root, split)):
            return os.path.join(root, split), os.path.join(root, "dev")
    if os.path.basename(os.path.normpath(path)) == split:
        return path, os.path.join(os.path.dirname(os.path.normpath(path)), "dev")
    return os.path.join(path, split), os.path.join(path, "dev")


def _body(question: str, options: Sequence[str]) -> str:
    return "\n".join([question] + [f"{letter}. {text}" for letter, text in zip(LETTERS, options)])


def _shot(row: Sequence[str], language: str) -> str:
    return f"{_body(row[0], row[1:5])}\n{ANSWER_WORD[language]} {row[5].strip()}\n\n"


def _subject_questions(subject: str, rows: List[List[str]], shots: List[List[str]],
                       language: str, template: Optional[str], title: str) -> List[ChoiceQuestion]:
    few_shot = HEADERS[language].format(subject=title) + "".join(_shot(r, language) for r in shots)
    questions = []
    for row in rows:
        if row[5].strip() not in LETTERS:
            raise BenchmarkLayoutError(f"{subject}: answer {row[5]!r} is not one of A-D")
        body = _body(row[0], row[1:5])
        prompt = fill_template(template, few_shot, body) if template else \
            f"{few_shot}{body}\n{ANSWER_WORD[language]}"
        questions.append(ChoiceQuestion(subject, prompt, LETTERS, row[5].strip()))
    return questions


def load_mmlu(path: str, language: Optional[str], template: Optional[str],
              max_samples: Optional[int]) -> List[ChoiceQuestion]:
    test_dir, dev_dir = _split_dirs(path, "test")
    tests = files_with_suffix(test_dir, "_test.csv")
    if not tests:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the MMLU layout (expected "
                                   f"test/<subject>_test.csv and dev/<subject>_dev.csv)")
    devs = files_with_suffix(dev_dir, "_dev.csv")
    questions: List[ChoiceQuestion] = []
    for subject, test_file in tests.items():
        shots = read_csv(devs[subject], 6, header=False)[:SHOTS] if subject in devs else []
        rows = limit(read_csv(test_file, 6, header=False), max_samples)
        questions += _subject_questions(subject, rows, shots, language or "en", template,
                                        subject.replace("_", " "))
    return questions


def load_ceval(path: str, language: Optional[str], template: Optional[str],
               max_samples: Optional[int]) -> List[ChoiceQuestion]:
    val_dir, dev_dir = _split_dirs(path, "val")
    vals = files_with_suffix(val_dir, "_val.csv")
    if not vals:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the C-Eval layout (expected "
                                   f"val/<subject>_val.csv and dev/<subject>_dev.csv; test/ has "
                                   f"no answers)")
    devs = files_with_suffix(dev_dir, "_dev.csv")
    names = _ceval_names(path)
    questions: List[ChoiceQuestion] = []
    for subject, val_file in vals.items():
        # Drop the id column: question, A, B, C, D, answer.
        shots = [r[1:7] for r in read_csv(devs[subject], 7, header=True)[:SHOTS]] \
            if subject in devs else []
        rows = [r[1:7] for r in limit(read_csv(val_file, 7, header=True), max_samples)]
        lang = language or "zh"
        title = names.get(subject, subject.replace("_", " ")) if lang == "zh" \
            else subject.replace("_", " ")
        questions += _subject_questions(subject, rows, shots, lang, template, title)
    return questions


def _ceval_names(path: str) -> Dict[str, str]:
    """C-Eval's subject_mapping.json (subject -> [English, Chinese, category]) when present."""
    for candidate in (os.path.join(path, "subject_mapping.json"),
                      os.path.join(os.path.dirname(os.path.normpath(path)), "subject_mapping.json")):
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as handle:
                return {k: v[1] for k, v in json.load(handle).items() if len(v) > 1}
    return {}


def load_agieval(path: str, language: Optional[str], template: Optional[str],
                 max_samples: Optional[int]) -> List[ChoiceQuestion]:
    folder = next((d for d in (os.path.join(path, "data", "v1"), os.path.join(path, "v1"), path)
                   if files_with_suffix(d, ".jsonl")), None)
    if folder is None:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the AGIEval layout (expected "
                                   f"data/v1/<task>.jsonl)")
    questions: List[ChoiceQuestion] = []
    for subject, file in files_with_suffix(folder, ".jsonl").items():
        records = [r for r in read_jsonl(file) if r.get("options")]
        for record in limit(records, max_samples):
            if "label" not in record or "question" not in record:
                raise BenchmarkLayoutError(f"{file}: a multiple-choice record needs question, "
                                           f"options and label")
            labels = tuple(chr(ord("A") + i) for i in range(len(record["options"])))
            label = record["label"] if isinstance(record["label"], str) else "".join(record["label"])
            lang = language or ("zh" if subject.startswith(("gaokao", "logiqa-zh", "jec")) else "en")
            body = ((record.get("passage") or "") + "\n" + record["question"]).strip() + "\n" + \
                "\n".join(record["options"])
            prompt = fill_template(template, "", body) if template else \
                f"{body}\n{ANSWER_WORD[lang]}"
            questions.append(ChoiceQuestion(subject, prompt, labels, label))
    return questions


def load_boolq(path: str, language: Optional[str], template: Optional[str],
               max_samples: Optional[int]) -> List[ChoiceQuestion]:
    file = next((f for f in (os.path.join(path, "dev.jsonl"), os.path.join(path, "val.jsonl"), path)
                 if os.path.isfile(f)), None)
    if file is None:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the BoolQ layout (expected "
                                   f"dev.jsonl with passage, question, answer)")
    questions = []
    for record in limit(read_jsonl(file), max_samples):
        answer = record.get("answer", record.get("label"))
        if not isinstance(answer, bool) or "question" not in record or "passage" not in record:
            raise BenchmarkLayoutError(f"{file}: each record needs passage, question and a "
                                       f"true/false answer")
        body = f"{record['passage']}\nQuestion: {record['question']}?"
        prompt = fill_template(template, "", body) if template else body + "\nAnswer:"
        questions.append(ChoiceQuestion("boolq", prompt, ("yes", "no"),
                                        "yes" if answer else "no"))
    return questions


LOADERS = {"mmlu": load_mmlu, "ceval": load_ceval, "agieval": load_agieval, "boolq": load_boolq}

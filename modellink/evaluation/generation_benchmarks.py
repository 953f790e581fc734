"""Benchmarks answered with generated text, in their published layouts.

GSM8K      test.jsonl: question, answer ("...#### 72"); 4-shot chain of thought from train.jsonl
           when it sits beside test.jsonl; scored on the final number.
BBH        <task>.json: {"examples": [{"input", "target"}]} per task (BIG-Bench-Hard's bbh/),
           few-shot chain of thought from cot-prompts/<task>.txt when present; exact match.
HumanEval  HumanEval.jsonl[.gz]: task_id, prompt, canonical_solution, test, entry_point; the
           completion is run against the tests (pass@1).
exact_match  any .jsonl of {"question", "answer"} (the demo's test.jsonl, or a folder holding
           test.jsonl); the first line of the reply must equal the answer, whitespace aside.
"""
from __future__ import annotations

import json
import os
import re
from typing import List, Optional

from modellink.evaluation.questions import (
    BenchmarkLayoutError,
    CodeProblem,
    GenerationQuestion,
    files_with_suffix,
    fill_template,
    limit,
    read_jsonl,
)

GSM8K_SHOTS = 4
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _clean(number: str) -> str:
    number = number.replace(",", "").rstrip(".")
    return number[:-2] if number.endswith(".0") else number


def final_number(text: str) -> Optional[str]:
    """GSM8K's answer in a reply: the number after '####' (or 'answer is'), else the last one."""
    for marker in ("####", "answer is"):
        if marker in text:
            numbers = _NUMBER.findall(text.rsplit(marker, 1)[1])
            if numbers:
                return _clean(numbers[0])
    numbers = _NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def load_gsm8k(path: str, language: Optional[str], template: Optional[str],
               max_samples: Optional[int]) -> List[GenerationQuestion]:
    test = next((f for f in (os.path.join(path, "test.jsonl"), path) if os.path.isfile(f)), None)
    if test is None:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the GSM8K layout (expected "
                                   f"test.jsonl with question and answer)")
    train = os.path.join(os.path.dirname(test), "train.jsonl")
    shots = read_jsonl(train)[:GSM8K_SHOTS] if os.path.isfile(train) else []
    few_shot = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in shots)
    questions = []
    for record in limit(read_jsonl(test), max_samples):
        if "question" not in record or "####" not in str(record.get("answer", "")):
            raise BenchmarkLayoutError(f"{test}: each record needs question and an answer "
                                       f"ending in '#### <number>'")
        body = f"Question: {record['question']}"
        prompt = fill_template(template, few_shot, body) if template else \
            f"{few_shot}{body}\nAnswer:"
        questions.append(GenerationQuestion("gsm8k", prompt, final_number(record["answer"]),
                                            stop=("\n\nQuestion:", "\nQuestion:")))
    return questions


def _bbh_prompt(folder: str, task: str) -> str:
    for prompts in (os.path.join(folder, "cot-prompts"),
                    os.path.join(os.path.dirname(os.path.normpath(folder)), "cot-prompts")):
        file = os.path.join(prompts, f"{task}.txt")
        if os.path.isfile(file):
            text = open(file, encoding="utf-8").read()
            # The published prompts open with a canary line and a "-----" separator.
            return text.split("-----", 1)[1].lstrip("\n") + "\n\n" if "-----" in text else text
    return ""


def bbh_answer(text: str) -> str:
    match = re.search(r"the answer is (.*?)(?:\.\s*$|\.\n|$)", text, flags=re.IGNORECASE | re.M)
    answer = match.group(1) if match else text.strip().split("\n")[0]
    return answer.strip().rstrip(".").strip()


def load_bbh(path: str, language: Optional[str], template: Optional[str],
             max_samples: Optional[int]) -> List[GenerationQuestion]:
    folder = next((d for d in (os.path.join(path, "bbh"), path) if files_with_suffix(d, ".json")),
                  None)
    if folder is None:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the BBH layout (expected "
                                   f"bbh/<task>.json with an 'examples' list)")
    questions = []
    for task, file in files_with_suffix(folder, ".json").items():
        with open(file, encoding="utf-8") as handle:
            try:
                examples = json.load(handle)["examples"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BenchmarkLayoutError(f"{file}: expected {{\"examples\": [{{\"input\", "
                                           f"\"target\"}}, ...]}}") from None
        few_shot = _bbh_prompt(folder, task)
        for example in limit(examples, max_samples):
            body = f"Q: {example['input']}"
            prompt = fill_template(template, few_shot, body) if template else \
                f"{few_shot}{body}\nA:"
            questions.append(GenerationQuestion(task, prompt, str(example["target"]).strip(),
                                                stop=("\n\nQ:", "\nQ:")))
    return questions


def load_human_eval(path: str, language: Optional[str], template: Optional[str],
                    max_samples: Optional[int]) -> List[CodeProblem]:
    files = list(files_with_suffix(path, ".jsonl").values()) + \
        list(files_with_suffix(path, ".jsonl.gz").values())
    if os.path.isfile(path):
        files = [path]
    if not files:
        raise BenchmarkLayoutError(f"--task-data-path {path}: not the HumanEval layout (expected "
                                   f"HumanEval.jsonl[.gz])")
    problems = []
    for record in limit([r for f in files for r in read_jsonl(f)], max_samples):
        if not all(k in record for k in ("prompt", "test", "entry_point")):
            raise BenchmarkLayoutError(f"{files[0]}: each record needs prompt, test and "
                                       f"entry_point")
        problems.append(CodeProblem("human_eval", record["prompt"], record["test"],
                                    record["entry_point"]))
    return problems


def same_text(reply: str, reference: str) -> bool:
    return reply.split() == reference.split()


def load_exact_match(path: str, language: Optional[str], template: Optional[str],
                     max_samples: Optional[int]) -> List[GenerationQuestion]:
    test = next((f for f in (os.path.join(path, "test.jsonl"), path) if os.path.isfile(f)), None)
    if test is None:
        raise BenchmarkLayoutError(f"--task-data-path {path}: expected a .jsonl file (or a folder "
                                   f"with test.jsonl) of question/answer records")
    questions = []
    for record in limit(read_jsonl(test), max_samples):
        if not isinstance(record.get("question"), str) or "answer" not in record:
            raise BenchmarkLayoutError(f"{test}: each record needs a question string and an "
                                       f"answer")
        prompt = fill_template(template, "", record["question"]) if template else \
            record["question"]
        questions.append(GenerationQuestion("exact_match", prompt, str(record["answer"]),
                                            stop=("\n",)))
    return questions


LOADERS = {"gsm8k": load_gsm8k, "bbh": load_bbh, "human_eval": load_human_eval,
           "exact_match": load_exact_match}

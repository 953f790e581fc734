"""What a benchmark file turns into: questions with their prompt and the expected answer.

A ChoiceQuestion is answered by the model's log-likelihood of each choice continuation (or, for
a chat model, by the letter it writes); a GenerationQuestion by text the model writes, checked
by the benchmark's own rule; a CodeProblem by running the completed function against its tests.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from modellink.argument_errors import ArgumentError
from modellink.user_error import UserError


class BenchmarkLayoutError(UserError, ValueError):
    """A --task-data-path that is not laid out as the benchmark's published files."""


@dataclass(frozen=True)
class ChoiceQuestion:
    subject: str
    prompt: str
    labels: Tuple[str, ...]  # what the model answers: "A".."D", or "yes"/"no"
    answer: str  # the correct label

    @property
    def continuations(self) -> Tuple[str, ...]:
        return tuple(" " + label for label in self.labels)


@dataclass(frozen=True)
class GenerationQuestion:
    subject: str
    prompt: str
    reference: str
    stop: Tuple[str, ...] = ()  # the reply ends at the first of these


@dataclass(frozen=True)
class CodeProblem:
    subject: str
    prompt: str
    test: str
    entry_point: str
    stop: Tuple[str, ...] = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


def fill_template(template: str, few_shot_examples: str, question: str) -> str:
    try:
        return template.format(few_shot_examples=few_shot_examples, question=question)
    except (KeyError, IndexError, ValueError) as exc:
        raise ArgumentError(f"--instruction-template {template!r}: only {{few_shot_examples}} and "
                         f"{{question}} may be used ({exc})") from None


def read_jsonl(path: str) -> List[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    records = []
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise BenchmarkLayoutError(f"{path}:{number}: not a JSON line ({exc})") from None
    return records


def read_csv(path: str, columns: int, header: bool) -> List[List[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    rows = rows[1:] if header else rows
    for number, row in enumerate(rows, 2 if header else 1):
        if len(row) < columns:
            raise BenchmarkLayoutError(f"{path}:{number}: expected {columns} columns, "
                                       f"found {len(row)}")
    return rows


def files_with_suffix(folder: str, suffix: str) -> Dict[str, str]:
    """name without suffix -> path, for the files of `folder` ending in `suffix`."""
    if not os.path.isdir(folder):
        return {}
    return {name[:-len(suffix)]: os.path.join(folder, name)
            for name in sorted(os.listdir(folder)) if name.endswith(suffix)}


def limit(items: Sequence, count: Optional[int]) -> List:
    return list(items if count is None else items[:count])


def subjects_of(questions: Sequence) -> Iterator[str]:
    seen = []
    for question in questions:
        if question.subject not in seen:
            seen.append(question.subject)
            yield question.subject

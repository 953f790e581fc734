"""Scoring questions with any model that offers `loglikelihood` and `generate` (EvalModel):
the real one (modellink.evaluation.lm.ModelLinkLM) or a plain fake in tests."""
from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from modellink.evaluation.generation_benchmarks import bbh_answer, final_number, same_text
from modellink.evaluation.questions import ChoiceQuestion, CodeProblem, GenerationQuestion
from modellink.evaluation.results import TaskResult
from modellink.evaluation.sandbox import run_program


class EvalModel(Protocol):
    chat: bool  # True: choice questions are answered by generating the letter

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        """log p(continuation | context) for each (context, continuation)."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> List[str]:
        """The text the model writes after each prompt."""


def truncate(text: str, stops: Sequence[str]) -> str:
    cut = min([text.find(s) for s in stops if s in text], default=len(text))
    return text[:cut]


def _batches(items: Sequence, size: int) -> List[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def written_label(text: str, labels: Sequence[str]) -> Optional[str]:
    """ModelLink's rule first: the last label followed by a full stop on the reply's first line
    ("A is wrong, so D." is D). Otherwise the first word of the reply that is one of the labels
    (case-insensitive)."""
    first_line = text.lstrip().split("\n", 1)[0]
    stated = re.findall(r"\b(" + "|".join(map(re.escape, labels)) + r")\.", first_line)
    if stated:
        return stated[-1]
    lookup = {label.lower(): label for label in labels}
    for word in re.findall(r"[A-Za-z]+", text):
        if word.lower() in lookup:
            return lookup[word.lower()]
    return None


def answer_choices(model: EvalModel, questions: Sequence[ChoiceQuestion], batch_size: int,
                   max_new_tokens: int) -> List[Optional[str]]:
    answers: List[Optional[str]] = []
    for batch in _batches(questions, batch_size):
        if model.chat:
            replies = model.generate([q.prompt for q in batch], max_new_tokens)
            answers += [written_label(r, q.labels) for q, r in zip(batch, replies)]
            continue
        requests = [(q.prompt, c) for q in batch for c in q.continuations]
        scores = model.loglikelihood(requests)
        for q in batch:
            mine, scores = scores[:len(q.labels)], scores[len(q.labels):]
            answers.append(q.labels[max(range(len(mine)), key=mine.__getitem__)])
    return answers


def answer_generation(model: EvalModel, questions: Sequence[GenerationQuestion], batch_size: int,
                      max_new_tokens: int) -> List[str]:
    replies: List[str] = []
    for batch in _batches(questions, batch_size):
        texts = model.generate([q.prompt for q in batch], max_new_tokens)
        replies += [truncate(t, q.stop) for q, t in zip(batch, texts)]
    return replies


CHECKERS: Dict[str, Callable[[str, str], bool]] = {
    "gsm8k": lambda reply, reference: final_number(reply) == reference,
    "bbh": lambda reply, reference: bbh_answer(reply).lower() == reference.lower(),
    "exact_match": same_text,
}


def score(task: str, model: EvalModel, questions: Sequence, batch_size: int = 1,
          max_new_tokens: int = 256, timeout: float = 5.0,
          allow_unisolated: bool = False) -> TaskResult:
    """Right / wrong per question, summed per subject; HumanEval programs run in the sandbox
    (unisolated only when `allow_unisolated` and the OS has no isolation)."""
    result = TaskResult(task)
    if questions and isinstance(questions[0], ChoiceQuestion):
        answers = answer_choices(model, questions, batch_size, max_new_tokens)
        outcomes = [a == q.answer for q, a in zip(questions, answers)]
    elif questions and isinstance(questions[0], CodeProblem):
        completions = answer_generation(model, questions, batch_size, max_new_tokens)
        outcomes = [run_program(f"{q.prompt}{c}\n\n{q.test}\n\ncheck({q.entry_point})\n",
                                timeout, allow_unisolated).passed
                    for q, c in zip(questions, completions)]
    else:
        replies = answer_generation(model, questions, batch_size, max_new_tokens)
        outcomes = [CHECKERS[task](r, q.reference) for q, r in zip(questions, replies)]
    for question, right in zip(questions, outcomes):
        result.add(question.subject, right)
    return result

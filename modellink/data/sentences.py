"""Rule-based sentence splitting for ``--split-sentences`` (Megatron-LM uses NLTK punkt, whose
model must be downloaded; this needs nothing).

A sentence ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace,
or at a line break. With ``keep_newlines`` the line breaks after a sentence stay at its end,
as Megatron's ``--keep-newlines`` does; otherwise sentences are stripped.
"""

import re
from typing import List

_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+|\n\s*")


def split_sentences(text: str, keep_newlines: bool = False) -> List[str]:
    """The non-empty sentences of ``text``, in order."""
    sentences = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        sentences.append(_tidy(text[start:match.end()], keep_newlines))
        start = match.end()
    sentences.append(_tidy(text[start:], keep_newlines))
    return [s for s in sentences if s]


def _tidy(chunk: str, keep_newlines: bool) -> str:
    body = chunk.strip()
    if keep_newlines and body:
        body += "\n" * chunk[len(chunk.rstrip()):].count("\n")
    return body

"""One entry point for every benchmark's loader."""
from __future__ import annotations

from typing import List, Optional

from modellink.argument_errors import ArgumentError
from modellink.evaluation import choice_benchmarks, generation_benchmarks

LOADERS = {**choice_benchmarks.LOADERS, **generation_benchmarks.LOADERS}


def load_questions(task: str, path: str, language: Optional[str] = None,
                   template: Optional[str] = None, max_samples: Optional[int] = None) -> List:
    """The questions of `task` read from `path` (the benchmark's published layout)."""
    if task not in LOADERS:
        raise ArgumentError(f"unknown benchmark {task!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[task](path, language, template, max_samples)

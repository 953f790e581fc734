"""Per-subject accuracy, printed as a table with a total row and written as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List


@dataclass
class TaskResult:
    task: str
    subjects: Dict[str, List[int]] = field(default_factory=dict)  # subject -> [correct, total]
    extra: Dict[str, float] = field(default_factory=dict)  # e.g. perplexity figures
    records: List[Dict[str, float]] = field(default_factory=list)  # per item, JSON only

    def add(self, subject: str, correct: bool) -> None:
        counts = self.subjects.setdefault(subject, [0, 0])
        counts[0] += int(correct)
        counts[1] += 1

    @property
    def correct(self) -> int:
        return sum(c for c, _ in self.subjects.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.subjects.values())

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def table(self) -> str:
        width = max([len(s) for s in self.subjects] + [len("subject"), len(self.task)]) + 2
        lines = [self.task, f"{'subject':<{width}}{'questions':>10}{'correct':>10}{'accuracy':>10}"]
        for subject, (correct, total) in self.subjects.items():
            lines.append(f"{subject:<{width}}{total:>10}{correct:>10}{correct / total:>10.2%}")
        if self.subjects:
            lines.append(f"{'total':<{width}}{self.total:>10}{self.correct:>10}"
                         f"{self.accuracy:>10.2%}")
        lines += [f"{key}: {value:.6g}" for key, value in self.extra.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out: dict = dict(self.extra)
        if self.subjects:
            out["subjects"] = {s: {"correct": c, "total": t, "accuracy": c / t}
                               for s, (c, t) in self.subjects.items()}
            out["total"] = {"correct": self.correct, "total": self.total,
                            "accuracy": self.accuracy}
        if self.records:
            out["records"] = self.records
        return out


def write_results(results: List[TaskResult], path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({r.task: r.to_dict() for r in results}, handle, indent=2, ensure_ascii=False)

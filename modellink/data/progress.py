"""Progress lines (docs/s, MB/s, ETA) and the end-of-run summary."""

import logging
import time
from collections import Counter
from typing import Callable, Dict, List, Optional

logger = logging.getLogger("modellink.data.preprocess")
EXAMPLES_PER_REASON = 3


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts documents, records and input bytes; logs every ``log_interval`` documents."""

    def __init__(self, total_bytes: int, log_interval: int, max_samples: Optional[int] = None,
                 log: Callable[[str], None] = logger.info) -> None:
        self.total_bytes = max(total_bytes, 1)
        self.log_interval = log_interval
        self.max_samples = max_samples
        self.log = log
        self.start = time.monotonic()
        self.documents = self.records = self.input_bytes = 0
        self.next_log = log_interval
        self.skipped: Counter = Counter()
        self.skip_examples: Dict[str, List[str]] = {}

    def update(self, documents: int, records: int, input_bytes: int) -> None:
        self.documents += documents
        self.records += records
        self.input_bytes += input_bytes
        if self.documents >= self.next_log:
            self.log(self.line())
            self.next_log = (self.documents // self.log_interval + 1) * self.log_interval

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        examples = self.skip_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(where)

    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def line(self) -> str:
        elapsed = self.elapsed()
        done = self.input_bytes / self.total_bytes
        if self.max_samples:
            done = max(done, self.records / self.max_samples)
        eta = elapsed * (1 - done) / done if done > 0 else float("inf")
        return (f"Processed {self.documents} documents ({self.documents / elapsed:.1f} docs/s, "
                f"{self.input_bytes / elapsed / 2**20:.2f} MB/s), ETA {_duration(eta) if eta != float('inf') else '?'}")

    def summary(self, tokens: Dict[str, int], outputs: List[str]) -> str:
        elapsed = self.elapsed()
        lines = [f"Done in {_duration(elapsed)}: {self.records} records read, {self.documents} documents written "
                 f"({self.documents / elapsed:.1f} docs/s, {self.input_bytes / elapsed / 2**20:.2f} MB/s)"]
        lines += [f"  tokens [{key}]: {count}" for key, count in tokens.items()]
        total_skipped = sum(self.skipped.values())
        lines.append(f"  skipped records: {total_skipped}")
        for reason, count in self.skipped.most_common():
            lines.append(f"    {count} x {reason} (e.g. {', '.join(self.skip_examples[reason])})")
        lines += [f"  output: {prefix}.bin/.idx" for prefix in outputs]
        return "\n".join(lines)

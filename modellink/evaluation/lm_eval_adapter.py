"""lm-evaluation-harness adapter: `--task lm_eval:<task>` scores the loaded model on the
harness's tasks. Imported only when lm-eval is installed (it is not a dependency)."""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from lm_eval.api.model import LM

from modellink.evaluation.lm import ModelLinkLM
from modellink.evaluation.results import TaskResult
from modellink.evaluation.scoring import truncate


class ModelLinkHarnessLM(LM):
    def __init__(self, lm: ModelLinkLM, batch_size: int, max_new_tokens: int) -> None:
        super().__init__()
        self.lm, self.size, self.max_new_tokens = lm, batch_size, max_new_tokens

    def _batches(self, items: Sequence) -> List[Sequence]:
        return [items[i:i + self.size] for i in range(0, len(items), self.size)]

    def loglikelihood(self, requests: Sequence[Any]) -> List[Tuple[float, bool]]:
        out: List[Tuple[float, bool]] = []
        for batch in self._batches(requests):
            rows, starts = [], []
            for request in batch:
                context, continuation = request.args
                ctx, cont = self.lm._continuation_ids(context, continuation)
                ids = (ctx + cont)[-self.lm.max_length:]
                rows.append(ids)
                starts.append(len(ids) - len(cont))
            out += self.lm.score_tokens_greedy(rows, starts)
        return out

    def loglikelihood_rolling(self, requests: Sequence[Any]) -> List[float]:
        out: List[float] = []
        step = self.lm.max_length - 1
        for request in requests:
            ids = self.lm.model.tokenizer.tokenize(request.args[0])
            total = 0.0
            # Non-overlapping windows: each token scored once, the first of a window unscored
            # except the document's first, which has no context at all.
            for begin in range(0, len(ids), step):
                window = ids[max(begin - 1, 0):begin + step]
                total += self.lm.score_tokens([window], [1])[0]
            out.append(total)
        return out

    def generate_until(self, requests: Sequence[Any]) -> List[str]:
        out: List[str] = []
        for batch in self._batches(requests):
            contexts = [r.args[0] for r in batch]
            limits = [r.args[1].get("max_gen_toks", self.max_new_tokens) for r in batch]
            texts = self.lm.generate(contexts, max(limits))
            for request, text in zip(batch, texts):
                until = request.args[1].get("until") or []
                out.append(truncate(text, [until] if isinstance(until, str) else until))
        return out


def run_harness(lm: ModelLinkLM, tasks: List[str], batch_size: int, max_new_tokens: int,
                limit: Any) -> List[TaskResult]:
    import lm_eval

    results = lm_eval.simple_evaluate(model=ModelLinkHarnessLM(lm, batch_size, max_new_tokens),
                                      tasks=tasks, limit=limit)["results"]
    return [TaskResult(f"lm_eval:{task}", extra={k: v for k, v in metrics.items()
                                                 if isinstance(v, (int, float))})
            for task, metrics in results.items()]

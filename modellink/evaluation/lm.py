"""The loaded model as an EvalModel: log-likelihoods of continuations and generated replies.

Contexts longer than --max-length lose tokens from the left (as lm-eval-harness does), so a
long few-shot prompt still scores. Chat mode wraps every prompt, as one user turn, in the
--prompt-type template, or the tokenizer's chat template (--hf-chat-template, or by default
when the tokenizer has one, unless --no-chat-template); choice questions are then answered by
the letter the model writes instead of by likelihood.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import List, Sequence, Tuple

import torch

from modellink.inference.generation import GenerationConfig, generate
from modellink.inference.model import InferenceModel
from modellink.inference.prompting import prompt_format


class ModelLinkLM:
    def __init__(self, model: InferenceModel, args: argparse.Namespace) -> None:
        self.model = model
        self.max_length = args.max_length
        self.format = prompt_format(args, model.tokenizer)
        has_template = bool(getattr(model.tokenizer.hf_tokenizer, "chat_template", None))
        if has_template and not args.no_chat_template and self.format.template is None:
            self.format = dataclasses.replace(self.format, hf_chat_template=True)
        self.chat = self.format.hf_chat_template or self.format.template is not None
        self.config = GenerationConfig.from_args(args, do_sample=args.sample_replies,
                                                 stop_token_ids=self.format.stop_ids())

    def _encode_prompt(self, text: str) -> List[int]:
        if not self.chat:
            return self.model.tokenizer.tokenize(text)
        return self.format.encode([{"role": "user", "content": text}])

    def _continuation_ids(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        tokenizer = self.model.tokenizer
        whole = tokenizer.tokenize(context + continuation)
        start = tokenizer.tokenize(context)
        # Encoding the joined text keeps merges across the boundary as the model saw them.
        if whole[:len(start)] == start and len(whole) > len(start):
            return start, whole[len(start):]
        return start, tokenizer.encode_batch([continuation], add_special_tokens=False)[0]

    def loglikelihood(self, requests: Sequence[Tuple[str, str]]) -> List[float]:
        rows, spans = [], []
        for context, continuation in requests:
            ctx, cont = self._continuation_ids(context, continuation)
            ids = (ctx + cont)[-self.max_length:]
            rows.append(ids)
            spans.append(len(ids) - len(cont))
        return self.score_tokens(rows, spans)

    def score_tokens(self, rows: Sequence[Sequence[int]], starts: Sequence[int]) -> List[float]:
        """Sum of log p(token) over rows[i][starts[i]:], every rank getting the result."""
        return [total for total, _ in self.score_tokens_greedy(rows, starts)]

    def score_tokens_greedy(self, rows: Sequence[Sequence[int]], starts: Sequence[int]
                            ) -> List[Tuple[float, bool]]:
        """(sum of log p, whether every scored token was the most likely one) per row."""
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), self.model.tokenizer.pad, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.tensor(row)  # right padding: causal, so harmless
        logits = self.model.logits(tokens)
        summary = None
        if logits is not None:
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            targets = tokens[:, 1:, None].to(logits.device)
            picked = log_probs.gather(2, targets)[..., 0]
            greedy = log_probs.argmax(dim=-1) == targets[..., 0]
            mask = torch.zeros_like(picked, dtype=torch.bool)
            for i, (row, start) in enumerate(zip(rows, starts)):
                mask[i, max(start, 1) - 1:len(row) - 1] = True
            summary = torch.stack([(picked * mask).sum(dim=1),
                                   (greedy | ~mask).all(dim=1).float()], dim=1)
        summary = self.model.share_from_last_stage(summary, (len(rows), 2), torch.float32)
        return [(float(total), bool(flag)) for total, flag in summary.tolist()]

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> List[str]:
        room = self.max_length - max_new_tokens
        encoded = [self._encode_prompt(p)[-max(room, 1):] for p in prompts]
        config = dataclasses.replace(self.config, max_new_tokens=max_new_tokens)
        return [g.text for g in generate(self.model, encoded, config)]

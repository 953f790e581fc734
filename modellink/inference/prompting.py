"""Turning a conversation into prompt ids: a `--prompt-type` template, the Hugging Face
tokenizer's chat template (`--hf-chat-template`), or the bare text; and the ids that end a
reply (the tokenizer's end of document, the template's stop words, `--add-eos-token`)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from modellink.argument_errors import ArgumentError
from modellink.data.templates import Template, get_template
from modellink.data.tokenizers import Tokenizer

Message = Dict[str, str]


@dataclass(frozen=True)
class PromptFormat:
    tokenizer: Tokenizer
    template: Optional[Template]
    hf_chat_template: bool
    extra_stop_ids: Tuple[int, ...]

    def encode(self, messages: Sequence[Message]) -> List[int]:
        """Ids of the conversation so far, ready for the model's next reply."""
        if self.hf_chat_template:
            ids = self.tokenizer.hf_tokenizer.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if self.template is not None:
            return self.template.encode_prompt(self.tokenizer, messages)
        text = "\n".join(m["content"] for m in messages)
        return self.tokenizer.tokenize(text)

    def stop_ids(self) -> Tuple[int, ...]:
        ids = set(self.template.stop_token_ids(self.tokenizer)) if self.template else set()
        return tuple(sorted(ids | {self.tokenizer.eod} | set(self.extra_stop_ids)))


def prompt_format(args: argparse.Namespace, tokenizer: Tokenizer) -> PromptFormat:
    if args.hf_chat_template and args.prompt_type:
        raise ArgumentError("--hf-chat-template and --prompt-type both choose the prompt format; "
                         "pass one")
    if args.hf_chat_template and not getattr(tokenizer.hf_tokenizer, "chat_template", None):
        raise ArgumentError("--hf-chat-template: the tokenizer has no chat template")
    extra = []
    for token in args.add_eos_token:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ArgumentError(f"--add-eos-token {token!r} is not a single token of the tokenizer")
        extra.append(token_id)
    template = get_template(args.prompt_type) if args.prompt_type else None
    return PromptFormat(tokenizer, template, args.hf_chat_template, tuple(extra))

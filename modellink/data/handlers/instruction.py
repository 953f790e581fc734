"""Instruction (SFT) handlers: conversations -> input_ids / attention_mask / labels.

Labels are IGNORE_INDEX on every prompt token (system, user turns, template markup) and equal
to input_ids on response tokens; attention_mask is all ones (segment ids once packed, see
modellink.data.packing). Outputs: ``<prefix>_packed_{input_ids,attention_mask,labels}_document``.
"""

from typing import Any, List, Mapping, Sequence, Tuple

from modellink.argument_errors import ArgumentError
from modellink.data.conversations import (
    Conversation,
    alpaca_columns,
    alpaca_conversation,
    sharegpt_columns,
    sharegpt_conversation,
)
from modellink.data.handlers.base import (
    EMPTY_RESPONSE,
    IGNORE_INDEX,
    TOO_LONG,
    Handler,
    HandlerOptions,
    Outcome,
    Skip,
)
from modellink.data.records import InvalidRecord
from modellink.data.templates import get_template
from modellink.data.tokenizers import Tokenizer


class ConversationHandler(Handler):
    """Shared machinery: a record -> Conversation -> template ids -> (input_ids, labels)."""

    packable = True
    uses_prompt_type = True
    default_prompt_type = None

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        super().__init__(tokenizer, options)
        prompt_type = options.prompt_type or self.default_prompt_type
        if prompt_type is None:
            raise ArgumentError(f"{type(self).__name__} needs --prompt-type")
        self.template = get_template(prompt_type)

    @property
    def output_keys(self) -> List[str]:
        return ["input_ids", "attention_mask", "labels"]

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        raise NotImplementedError

    def _conversations(self, records: Sequence[Mapping[str, Any]]) -> List[Any]:
        """A Conversation or a Skip per record."""
        out: List[Any] = []
        for record in records:
            try:
                out.append(self.conversation(record))
            except InvalidRecord as err:
                out.append(Skip(str(err), invalid=True))
        return out

    def _sequence(self, turns: Sequence[Tuple[List[int], List[int]]]) -> Tuple[List[int], List[int]]:
        input_ids: List[int] = []
        labels: List[int] = []
        for prompt, response in turns:
            input_ids += prompt + response
            labels += [IGNORE_INDEX] * len(prompt) + response
        if self.options.append_eod:
            input_ids.append(self.tokenizer.eod)
            labels.append(self.tokenizer.eod)
        return input_ids, labels

    def encode(self, records: Sequence[Mapping[str, Any]]) -> List[Outcome]:
        items = self._conversations(records)
        for i, item in enumerate(items):
            if isinstance(item, Conversation) and not item.messages[-1]["content"].strip():
                items[i] = Skip(EMPTY_RESPONSE)
        todo = [c for c in items if isinstance(c, Conversation)]
        encoded = iter(self.template.encode_multiturn_batch(self.tokenizer, [(c.messages, c.system) for c in todo]))
        outcomes: List[Outcome] = []
        for item in items:
            if isinstance(item, Skip):
                outcomes.append(item)
                continue
            input_ids, labels = self._sequence(next(encoded))
            if self.too_long(input_ids):
                outcomes.append(Skip(TOO_LONG))
            else:
                outcomes.append({"input_ids": [input_ids], "attention_mask": [[1] * len(input_ids)],
                                 "labels": [labels]})
        return outcomes


class AlpacaStyleInstructionHandler(ConversationHandler):
    """Alpaca records {"instruction", "input", "output", ["history"], ["system"]}; --map-keys
    renames columns (prompt, query, response, history, system)."""

    uses_map_keys = True

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        super().__init__(tokenizer, options)
        self.columns = alpaca_columns(options.map_keys)

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        return alpaca_conversation(record, self.columns)


class SharegptStyleInstructionHandler(ConversationHandler):
    """ShareGPT records {"conversations": [{"from", "value"}, ...], ["system"]}; --map-keys
    renames columns (messages, system) and tags."""

    uses_map_keys = True

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        super().__init__(tokenizer, options)
        self.columns, self.tags = sharegpt_columns(options.map_keys)

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        return sharegpt_conversation(record, self.columns, self.tags)


class GeneralInstructionHandler(ConversationHandler):
    """ModelLink's general handler: {"instruction", "input", "output"}, the user turn is
    instruction + "\\n" + input, rendered with ModelLink's own prompt (prompt type "general")
    unless --prompt-type names another."""

    default_prompt_type = "general"

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        fields = []
        for key in ("instruction", "input", "output"):
            value = record.get(key)
            if not isinstance(value, str):
                raise InvalidRecord(f"missing key {key!r}" if value is None else f"key {key!r} must be a string")
            fields.append(value)
        return Conversation([{"role": "user", "content": fields[0] + "\n" + fields[1]},
                             {"role": "assistant", "content": fields[2]}])

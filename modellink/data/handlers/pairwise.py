"""Pairwise (reward model / DPO) handlers: one prompt, a chosen and a rejected response.

Outputs ``<prefix>_packed_{chosen,rejected}_{input_ids,labels}_document``: input_ids is the
prompt followed by the response, labels mask the prompt with IGNORE_INDEX.
"""

from typing import Any, List, Mapping, Sequence

from modellink.data.conversations import (
    Conversation,
    alpaca_columns,
    alpaca_conversation,
    sharegpt_columns,
    sharegpt_conversation,
)
from modellink.data.handlers.base import EMPTY_RESPONSE, TOO_LONG, HandlerOptions, Outcome, Skip
from modellink.data.handlers.instruction import ConversationHandler
from modellink.data.tokenizers import Tokenizer


class PairwiseHandler(ConversationHandler):
    packable = False
    uses_map_keys = True

    @property
    def output_keys(self) -> List[str]:
        return ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]

    def encode(self, records: Sequence[Mapping[str, Any]]) -> List[Outcome]:
        items = self._conversations(records)
        for i, item in enumerate(items):
            if isinstance(item, Conversation) and not (item.chosen.strip() and item.rejected.strip()):
                items[i] = Skip(EMPTY_RESPONSE)
        todo = [c for c in items if isinstance(c, Conversation)]
        requests = []
        for c in todo:
            for response in (c.chosen, c.rejected):
                requests.append((c.messages + [{"role": "assistant", "content": response}], c.system))
        encoded = iter(self.template.encode_multiturn_batch(self.tokenizer, requests))
        outcomes: List[Outcome] = []
        for item in items:
            if isinstance(item, Skip):
                outcomes.append(item)
                continue
            document = {}
            for name in ("chosen", "rejected"):
                turns = next(encoded)
                # Earlier turns are all context: only the final response is trained on.
                prompt = [i for p, r in turns[:-1] for i in p + r] + turns[-1][0]
                input_ids, labels = self._sequence([(prompt, turns[-1][1])])
                document[f"{name}_input_ids"], document[f"{name}_labels"] = [input_ids], [labels]
            too_long = any(self.too_long(document[k][0]) for k in ("chosen_input_ids", "rejected_input_ids"))
            outcomes.append(Skip(TOO_LONG) if too_long else document)
        return outcomes


class AlpacaStylePairwiseHandler(PairwiseHandler):
    """{"instruction", "input", "chosen", "rejected", ["history"], ["system"]}."""

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        super().__init__(tokenizer, options)
        self.columns = alpaca_columns(options.map_keys)

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        return alpaca_conversation(record, self.columns, pairwise=True)


class SharegptStylePairwiseHandler(PairwiseHandler):
    """{"conversations": [... ending with a human turn], "chosen": {"from": "gpt", "value"},
    "rejected": {...}}."""

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        super().__init__(tokenizer, options)
        self.columns, self.tags = sharegpt_columns(options.map_keys)

    def conversation(self, record: Mapping[str, Any]) -> Conversation:
        return sharegpt_conversation(record, self.columns, self.tags, pairwise=True)

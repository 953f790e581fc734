"""Alpaca- and ShareGPT-style records -> conversations, with ``--map-keys`` column mapping
(LLaMA-Factory's dataset_info conventions, as ModelLink uses them).

Alpaca:   {"instruction", "input", "output", ["history": [[q, a], ...]], ["system"]}
          pairwise: "chosen" / "rejected" replace "output".
ShareGPT: {"conversations": [{"from": "human"|"gpt"|"observation"|"function_call"|"system",
          "value": ...}, ...], ["system"]}; pairwise: the conversation ends with a user turn and
          "chosen" / "rejected" are {"from": "gpt", "value": ...}.
--map-keys renames columns, e.g. '{"prompt": "question", "response": "answer"}' for Alpaca or
'{"messages": "turns", "tags": {"role_tag": "role", "content_tag": "content",
"user_tag": "user", "assistant_tag": "assistant"}}' for ShareGPT.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from modellink.argument_errors import ArgumentError
from modellink.data.records import InvalidRecord

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None,
                  "system": None, "chosen": "chosen", "rejected": "rejected"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "chosen": "chosen", "rejected": "rejected"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


@dataclass(frozen=True)
class Conversation:
    """Messages alternating user/assistant; ``chosen``/``rejected`` are set for pairwise data, in
    which case ``messages`` ends with the user turn they answer."""

    messages: List[Dict[str, str]]
    system: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None


def alpaca_columns(map_keys: Optional[Mapping[str, Any]]) -> Dict[str, Optional[str]]:
    return _merge_columns(ALPACA_COLUMNS, map_keys, "Alpaca")


def sharegpt_columns(map_keys: Optional[Mapping[str, Any]]) -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
    map_keys = dict(map_keys or {})
    tags = dict(SHAREGPT_TAGS)
    for tag, value in (map_keys.pop("tags", None) or {}).items():
        if tag not in SHAREGPT_TAGS:
            raise ArgumentError(f"--map-keys: unknown ShareGPT tag {tag!r}; known: {', '.join(SHAREGPT_TAGS)}")
        tags[tag] = value
    return _merge_columns(SHAREGPT_COLUMNS, map_keys, "ShareGPT"), tags


def _merge_columns(defaults: Mapping[str, Optional[str]], map_keys: Optional[Mapping[str, Any]],
                   style: str) -> Dict[str, Optional[str]]:
    columns = dict(defaults)
    for key, value in (map_keys or {}).items():
        if key not in defaults:
            raise ArgumentError(f"--map-keys: {key!r} is not a {style}-style column; known: {', '.join(defaults)}")
        if value is not None and not isinstance(value, str):
            raise ArgumentError(f"--map-keys: the column name for {key!r} must be a string")
        columns[key] = value
    return columns


def _field(record: Mapping[str, Any], column: str, kind: type = str, required: bool = True) -> Any:
    if column not in record or record[column] is None:
        if required:
            raise InvalidRecord(f"missing key {column!r}")
        return None
    value = record[column]
    if not isinstance(value, kind):
        raise InvalidRecord(f"key {column!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _system(record: Mapping[str, Any], column: Optional[str]) -> Optional[str]:
    return _field(record, column, required=False) if column else None


def alpaca_conversation(record: Mapping[str, Any], columns: Mapping[str, Optional[str]],
                        pairwise: bool = False) -> Conversation:
    messages: List[Dict[str, str]] = []
    if columns["history"]:
        for turn in _field(record, columns["history"], list, required=False) or []:
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise InvalidRecord(f"key {columns['history']!r} must be a list of [query, response] pairs")
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    parts = [_field(record, columns["prompt"])]
    if columns["query"]:
        parts.append(_field(record, columns["query"], required=False))
    messages.append({"role": "user", "content": "\n".join(p for p in parts if p)})
    system = _system(record, columns["system"])
    if pairwise:
        return Conversation(messages, system, _field(record, columns["chosen"]), _field(record, columns["rejected"]))
    messages.append({"role": "assistant", "content": _field(record, columns["response"])})
    return Conversation(messages, system)


def sharegpt_conversation(record: Mapping[str, Any], columns: Mapping[str, Optional[str]],
                          tags: Mapping[str, str], pairwise: bool = False) -> Conversation:
    turns = _field(record, columns["messages"], list)
    roles = {tags["user_tag"]: "user", tags["observation_tag"]: "observation",
             tags["assistant_tag"]: "assistant", tags["function_tag"]: "function"}
    system = _system(record, columns["system"])
    if turns and isinstance(turns[0], dict) and turns[0].get(tags["role_tag"]) == tags["system_tag"]:
        system = _message(turns[0], tags, {tags["system_tag"]: "system"}, 0)["content"]
        turns = turns[1:]
    messages = [_message(turn, tags, roles, i) for i, turn in enumerate(turns)]
    for i, message in enumerate(messages):
        expected = ("user", "observation") if i % 2 == 0 else ("assistant", "function")
        if message["role"] not in expected:
            raise InvalidRecord(f"turn {i} of {columns['messages']!r} has the wrong role for its position "
                                f"(turns must alternate user and assistant)")
    if pairwise:
        if len(messages) % 2 != 1:
            raise InvalidRecord(f"{columns['messages']!r} must end with a user turn in pairwise data")
        assistant = {tags["assistant_tag"]: "assistant", tags["function_tag"]: "function"}
        chosen = _message(_field(record, columns["chosen"], dict), tags, assistant, "chosen")
        rejected = _message(_field(record, columns["rejected"], dict), tags, assistant, "rejected")
        return Conversation(messages, system, chosen["content"], rejected["content"])
    if not messages or len(messages) % 2 != 0:
        raise InvalidRecord(f"{columns['messages']!r} must hold user/assistant pairs ending with an assistant turn")
    return Conversation(messages, system)


def _message(turn: Any, tags: Mapping[str, str], roles: Mapping[str, str], where: Any) -> Dict[str, str]:
    if not isinstance(turn, dict):
        raise InvalidRecord(f"turn {where} must be an object")
    role = roles.get(turn.get(tags["role_tag"]))
    if role is None:
        raise InvalidRecord(f"turn {where} has unexpected {tags['role_tag']!r} value {turn.get(tags['role_tag'])!r}")
    content = turn.get(tags["content_tag"])
    if not isinstance(content, str):
        raise InvalidRecord(f"turn {where} has no string {tags['content_tag']!r}")
    return {"role": role, "content": content}

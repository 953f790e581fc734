"""Turning one raw input line into a record, and the error for a record that cannot be used."""

import json
from typing import Any, Dict

from modellink.user_error import UserError


class InvalidRecord(UserError, ValueError):
    """A record that is malformed (bad JSON, missing key, wrong type): an error naming its
    location, or a counted skip with --skip-bad-records."""


def parse_line(fmt: str, raw: bytes) -> Dict[str, Any]:
    """The record on one line of a ``jsonl`` or ``txt`` file (without its newline)."""
    if fmt == "txt":
        try:
            return {"text": raw.decode("utf-8").rstrip("\r")}
        except UnicodeDecodeError as err:
            raise InvalidRecord(f"invalid UTF-8: {err}") from None
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidRecord(f"malformed JSON: {err}") from None
    if not isinstance(record, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(record).__name__}")
    return record

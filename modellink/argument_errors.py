"""The command line's error type, in a module of its own so that the flag groups kept beside
their features (models/feature_args.py, training/*_args.py) can raise it without importing
modellink.arguments, which imports them."""
from __future__ import annotations

from modellink.user_error import UserError


class ArgumentError(UserError, ValueError):
    """A bad command line; the message names the flag and the problem."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ArgumentError(message)

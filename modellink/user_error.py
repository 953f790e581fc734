"""The base of every error a user can fix (a flag, a file, a checkpoint, a data record).

`modellink.errors.run_cli` prints these as one `error: ...` line; anything else is a bug or
an environment failure and keeps its traceback. A module of its own, importing nothing, so
that every feature can raise its error type without import cycles."""


class UserError(Exception):
    """A problem in what the user gave us; the message names the flag or file and the problem."""

"""The one error type conversion raises for bad input; its message is a single line."""
from modellink.user_error import UserError


class ConversionError(UserError, ValueError):
    """Bad input to a conversion, found before anything is written."""

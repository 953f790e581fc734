"""The one error type conversion raises for bad input; its message is a single line."""


class ConversionError(ValueError):
    """Bad input to a conversion, found before anything is written."""

"""Preprocessing handlers, by --handler-name."""

from typing import Dict, Type

from modellink.argument_errors import ArgumentError
from modellink.data.handlers.base import IGNORE_INDEX, Handler, HandlerOptions, Outcome, Skip
from modellink.data.handlers.instruction import (
    AlpacaStyleInstructionHandler,
    GeneralInstructionHandler,
    SharegptStyleInstructionHandler,
)
from modellink.data.handlers.pairwise import AlpacaStylePairwiseHandler, SharegptStylePairwiseHandler
from modellink.data.handlers.pretrain import GeneralPretrainHandler

HANDLERS: Dict[str, Type[Handler]] = {cls.__name__: cls for cls in (
    GeneralPretrainHandler,
    AlpacaStyleInstructionHandler,
    SharegptStyleInstructionHandler,
    GeneralInstructionHandler,
    AlpacaStylePairwiseHandler,
    SharegptStylePairwiseHandler,
)}


def get_handler_class(name: str) -> Type[Handler]:
    """The handler class called ``name``; ValueError naming the known ones otherwise."""
    try:
        return HANDLERS[name]
    except KeyError:
        raise ArgumentError(f"unknown --handler-name {name!r}; known: {', '.join(HANDLERS)}") from None


__all__ = ["HANDLERS", "IGNORE_INDEX", "Handler", "HandlerOptions", "Outcome", "Skip", "get_handler_class"]

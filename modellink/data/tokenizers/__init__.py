"""Tokenizers shared by preprocessing, training, inference and evaluation."""

from modellink.data.tokenizers.arguments import TOKENIZER_TYPES, add_tokenizer_arguments
from modellink.data.tokenizers.base import Tokenizer
from modellink.data.tokenizers.build import build_tokenizer

__all__ = ["TOKENIZER_TYPES", "Tokenizer", "add_tokenizer_arguments", "build_tokenizer"]

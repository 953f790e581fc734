"""``build_tokenizer(args)``: the tokenizer named by --tokenizer-type, with clear errors."""

import argparse
import ast
from typing import Any, Dict, List, Optional

from modellink.argument_errors import ArgumentError
from modellink.data.tokenizers.base import Tokenizer
from modellink.data.tokenizers.hf import load_gpt2_bpe, load_pretrained
from modellink.data.tokenizers.null import NullTokenizer
from modellink.data.tokenizers.sentencepiece import (
    GPTSentencePieceTokenizer,
    Llama2Tokenizer,
    SentencePieceTokenizer,
)


def tokenizer_kwargs(pairs: Optional[List[str]]) -> Dict[str, Any]:
    """--tokenizer-kwargs KEY VALUE ...: values as Python literals (ModelLink passes them as
    strings, so its `use_fast False` would be a true string), anything else as text."""
    if not pairs:
        return {}
    if len(pairs) % 2:
        raise ArgumentError(f"--tokenizer-kwargs takes key value pairs; {pairs[-1]!r} has no value")
    kwargs = {}
    for key, text in zip(pairs[::2], pairs[1::2]):
        try:
            kwargs[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[key] = text
    return kwargs


def build_tokenizer(args: argparse.Namespace) -> Tokenizer:
    """Builds the tokenizer from parsed tokenizer flags (see ``add_tokenizer_arguments``)."""
    kind = getattr(args, "tokenizer_type", None)
    use_fast = not getattr(args, "tokenizer_not_use_fast", False)
    padding_side = getattr(args, "tokenizer_padding_side", "right")
    extra = tokenizer_kwargs(getattr(args, "tokenizer_kwargs", None))
    if kind is None:
        raise ArgumentError("--tokenizer-type is required")
    if extra and kind not in ("PretrainedFromHF", "HuggingFaceTokenizer"):
        raise ArgumentError(f"--tokenizer-kwargs applies to Hugging Face tokenizers "
                            f"(PretrainedFromHF, HuggingFaceTokenizer), not {kind}")
    if kind == "PretrainedFromHF":
        return load_pretrained(getattr(args, "tokenizer_name_or_path", None), "--tokenizer-name-or-path",
                               use_fast, padding_side, extra)
    if kind == "HuggingFaceTokenizer":
        return load_pretrained(getattr(args, "tokenizer_model", None), "--tokenizer-model",
                               use_fast, padding_side, extra)
    if kind == "GPT2BPETokenizer":
        return load_gpt2_bpe(getattr(args, "vocab_file", None), getattr(args, "merge_file", None))
    if kind == "Llama2Tokenizer":
        return Llama2Tokenizer(getattr(args, "tokenizer_model", None))
    if kind == "SentencePieceTokenizer":
        return SentencePieceTokenizer(getattr(args, "tokenizer_model", None))
    if kind == "GPTSentencePieceTokenizer":
        return GPTSentencePieceTokenizer(getattr(args, "tokenizer_model", None))
    if kind == "NullTokenizer":
        return NullTokenizer(getattr(args, "vocab_size", None))
    raise ArgumentError(f"unknown --tokenizer-type {kind!r}")

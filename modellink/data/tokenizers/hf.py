"""Tokenizers backed by Hugging Face ``transformers``: PretrainedFromHF, HuggingFaceTokenizer
and GPT2BPETokenizer (a GPT-2 byte-level BPE built from vocab.json + merges.txt)."""

import os
from typing import Any, Dict, List, Optional, Sequence

from modellink.argument_errors import ArgumentError
from modellink.data.tokenizers.base import Tokenizer


class HFTokenizer(Tokenizer):
    """Wraps a ``transformers`` tokenizer with Megatron's tokenizer interface.

    ``tokenize`` adds the tokenizer's own special tokens (e.g. Llama's BOS), as ModelLink's
    PretrainedFromHF and Megatron-LM's HuggingFaceTokenizer do; ``vocab_size`` counts added
    tokens too (``len(tokenizer)``), since every one of them can appear in the data.
    """

    def __init__(self, hf_tokenizer: Any, source: str) -> None:
        self.hf_tokenizer = hf_tokenizer
        if hf_tokenizer.eos_token_id is None:
            raise ArgumentError(f"tokenizer {source} has no eos token, which is needed as end-of-document")
        self._vocab: Dict[str, int] = hf_tokenizer.get_vocab()
        self._vocab_size = max(len(hf_tokenizer), max(self._vocab.values()) + 1)
        self._backend = _direct_backend(hf_tokenizer)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eod(self) -> int:
        return self.hf_tokenizer.eos_token_id

    @property
    def pad(self) -> int:
        pad = self.hf_tokenizer.pad_token_id
        return self.eod if pad is None else pad

    @property
    def bos(self) -> Optional[int]:
        return self.hf_tokenizer.bos_token_id

    def tokenize(self, text: str) -> List[int]:
        return self.hf_tokenizer(text)["input_ids"]

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.hf_tokenizer.decode(list(ids))

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)]
        return self.hf_tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]

    def token_to_id(self, token: str) -> Optional[int]:
        return self._vocab.get(token)


def _direct_backend(hf_tokenizer: Any) -> Any:
    """The Rust tokenizer behind a fast HF tokenizer when calling it directly yields exactly the
    ids ``hf_tokenizer(texts)`` would (no subclass override, no truncation or padding set), else
    None. Skipping offsets and BatchEncoding nearly halves the cost of tokenizing."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(hf_tokenizer, PreTrainedTokenizerFast):
        return None
    for name in ("_encode_plus", "_batch_encode_plus"):
        if getattr(type(hf_tokenizer), name, None) is not getattr(PreTrainedTokenizerFast, name, None):
            return None
    backend = hf_tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None or not hasattr(backend, "encode_batch_fast"):
        return None
    # transformers sets this on every call; the tokenizer object is ours, so once is enough.
    backend.encode_special_tokens = bool(getattr(hf_tokenizer, "split_special_tokens", False))
    return backend


def load_pretrained(path: Optional[str], flag: str, use_fast: bool, padding_side: str,
                    extra: Optional[Dict[str, Any]] = None) -> HFTokenizer:
    """Loads a local Hugging Face tokenizer folder; never downloads. `extra` is
    --tokenizer-kwargs, which wins over the other flags."""
    if not path:
        raise ArgumentError(f"{flag} is required for this --tokenizer-type (a local tokenizer folder)")
    if not os.path.isdir(path):
        raise ArgumentError(f"{flag} {path}: no such tokenizer folder")
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(
            path, **{"use_fast": use_fast, "padding_side": padding_side, **(extra or {}),
                     "local_files_only": True})
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ArgumentError(f"cannot load a Hugging Face tokenizer from {path}: {err}") from None
    return HFTokenizer(hf_tokenizer, path)


def load_gpt2_bpe(vocab_file: Optional[str], merge_file: Optional[str]) -> HFTokenizer:
    """GPT-2 byte-level BPE; '<|endoftext|>' is the EOD as in Megatron-LM's GPT2BPETokenizer."""
    files = (("--vocab-file", vocab_file), ("--merge-file", merge_file))
    for flag, path in files:
        if not path:
            raise ArgumentError(f"GPT2BPETokenizer needs {flag}")
    for flag, path in files:
        if not os.path.isfile(path):
            raise ArgumentError(f"{flag} {path}: no such file")
    from transformers import GPT2TokenizerFast

    try:
        # Positional: the keyword names differ between transformers 4 and 5.
        hf_tokenizer = GPT2TokenizerFast(vocab_file, merge_file)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ArgumentError(f"cannot build GPT2BPETokenizer from {vocab_file} / {merge_file}: {err}") from None
    if "<|endoftext|>" not in hf_tokenizer.get_vocab():
        raise ArgumentError(f"--vocab-file {vocab_file} has no '<|endoftext|>' token (GPT-2's end-of-document)")
    return HFTokenizer(hf_tokenizer, vocab_file)

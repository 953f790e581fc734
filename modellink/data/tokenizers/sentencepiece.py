"""Sentencepiece tokenizers with Megatron-LM's semantics.

* Llama2Tokenizer: ``tokenize`` prepends BOS; EOD is the model's EOS.
* GPTSentencePieceTokenizer: plain sentencepiece ids; EOD is the model's EOS.
* SentencePieceTokenizer: appends Megatron's special tokens (<CLS>, <SEP>, <EOD>, <MASK>, and
  the model's pad/bos/eos pieces when it lacks them) after the sentencepiece vocabulary and
  recognises them inside text; EOD is <EOD>.
"""

import os
from typing import Dict, List, Optional, Sequence

from modellink.argument_errors import ArgumentError
from modellink.data.tokenizers.base import Tokenizer


def _load_processor(model_file: Optional[str]):
    if not model_file:
        raise ArgumentError("--tokenizer-model (a sentencepiece .model file) is required for this --tokenizer-type")
    if not os.path.isfile(model_file):
        raise ArgumentError(f"--tokenizer-model {model_file}: no such file")
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(model_file)
    except (OSError, RuntimeError) as err:
        raise ArgumentError(f"cannot load sentencepiece model {model_file}: {err}") from None
    return processor


class _SentencePieceBase(Tokenizer):
    def __init__(self, model_file: Optional[str]) -> None:
        self._sp = _load_processor(model_file)
        self._vocab: Dict[str, int] = {self._sp.id_to_piece(i): i for i in range(self._sp.get_piece_size())}

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def _optional(self, token_id: int) -> Optional[int]:
        return token_id if token_id >= 0 else None

    def _encode_plain(self, text: str) -> List[int]:
        return self._sp.encode_as_ids(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode_ids([int(i) for i in ids])

    def token_to_id(self, token: str) -> Optional[int]:
        return self._vocab.get(token)


class GPTSentencePieceTokenizer(_SentencePieceBase):
    @property
    def eod(self) -> int:
        return self._sp.eos_id()

    @property
    def pad(self) -> int:
        pad = self._sp.pad_id()
        return pad if pad >= 0 else self.eod

    @property
    def bos(self) -> Optional[int]:
        return self._optional(self._sp.bos_id())

    def tokenize(self, text: str) -> List[int]:
        return self._sp.encode_as_ids(text)


class Llama2Tokenizer(GPTSentencePieceTokenizer):
    def tokenize(self, text: str) -> List[int]:
        return [self._sp.bos_id()] + self._sp.encode_as_ids(text)


class SentencePieceTokenizer(_SentencePieceBase):
    def __init__(self, model_file: Optional[str]) -> None:
        super().__init__(model_file)
        self._special: Dict[str, int] = {}
        for token in ("<CLS>", "<SEP>", "<EOD>", "<MASK>"):
            self._add_special(token)
        self._pad_id = self._add_special(self._piece_or(self._sp.pad_id(), "<PAD>"))
        self._bos_id = self._add_special(self._piece_or(self._sp.bos_id(), "<BOS>"))
        self._eos_id = self._add_special(self._piece_or(self._sp.eos_id(), "<EOS>"))
        self._inv_special = {i: t for t, i in self._special.items()}

    def _piece_or(self, token_id: int, fallback: str) -> str:
        return self._sp.id_to_piece(token_id) if 0 <= token_id < self._sp.get_piece_size() else fallback

    def _add_special(self, token: str) -> int:
        if token not in self._vocab:
            self._vocab[token] = len(self._vocab)
        self._special[token] = self._vocab[token]
        return self._vocab[token]

    @property
    def eod(self) -> int:
        return self._special["<EOD>"]

    @property
    def pad(self) -> int:
        return self._pad_id

    @property
    def bos(self) -> Optional[int]:
        return self._bos_id

    def tokenize(self, text: str) -> List[int]:
        ids: List[int] = []
        start = 0
        while True:
            found = [(text.find(t, start), t) for t in self._special]
            found = [(pos, t) for pos, t in found if pos >= 0]
            if not found:
                break
            pos, token = min(found)
            ids.extend(self._sp.encode_as_ids(text[start:pos]))
            ids.append(self._special[token])
            start = pos + len(token)
        ids.extend(self._sp.encode_as_ids(text[start:]))
        return ids

    _encode_plain = tokenize

    def detokenize(self, ids: Sequence[int]) -> str:
        text, run = "", []
        for i in ids:
            if int(i) in self._inv_special:
                text += self._sp.decode_ids(run) + self._inv_special[int(i)]
                run = []
            else:
                run.append(int(i))
        return text + self._sp.decode_ids(run)

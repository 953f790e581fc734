"""NullTokenizer: text is a space-separated list of ids (Megatron-LM's benchmarking tokenizer)."""

from typing import List, Sequence

from modellink.argument_errors import ArgumentError
from modellink.data.tokenizers.base import Tokenizer


class NullTokenizer(Tokenizer):
    """Ids 0..vocab_size-1 are ordinary tokens and vocab_size itself is the EOD, as in Megatron."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size is None or vocab_size < 1:
            raise ArgumentError("NullTokenizer needs --vocab-size (a positive integer)")
        self._vocab_size_without_eod = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size_without_eod + 1

    @property
    def eod(self) -> int:
        return self._vocab_size_without_eod

    def tokenize(self, text: str) -> List[int]:
        try:
            ids = [int(x) for x in text.split()]
        except ValueError as err:
            raise ValueError(f"NullTokenizer expects space-separated integers: {err}") from None
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"NullTokenizer: id {bad[0]} is outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

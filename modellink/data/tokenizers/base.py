"""The interface every tokenizer built by ``build_tokenizer`` provides."""

from abc import ABC, abstractmethod
from typing import Any, List, Optional, Sequence


class Tokenizer(ABC):
    """Megatron-style tokenizer.

    ``vocab_size`` is the unpadded number of token ids (every id the tokenizer can emit is
    below it); ``eod`` ends a document; ``pad`` is the padding id (``eod`` when the tokenizer
    has none); ``bos`` is None when the tokenizer has no begin-of-sequence token.
    """

    hf_tokenizer: Any = None

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eod(self) -> int: ...

    @property
    def pad(self) -> int:
        return self.eod

    @property
    def bos(self) -> Optional[int]:
        return None

    @abstractmethod
    def tokenize(self, text: str) -> List[int]:
        """Token ids of ``text`` as Megatron's tokenizer of the same type returns them."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        """Token ids of each text; with add_special_tokens=False no BOS/EOS is added, which is
        how prompt templates encode their pieces."""
        if add_special_tokens:
            return [self.tokenize(t) for t in texts]
        return [self._encode_plain(t) for t in texts]

    def _encode_plain(self, text: str) -> List[int]:
        return self.tokenize(text)

    def token_to_id(self, token: str) -> Optional[int]:
        """Id of ``token`` when it is a single entry of the vocabulary, else None."""
        return None

"""What a preprocessing handler is: records in, per-key token sequences (or a skip) out."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from modellink.data.tokenizers import Tokenizer

IGNORE_INDEX = -100
"""Label of every token that is not trained on (prompt tokens, padding). It is ModelLink's
IGNORE_INDEX and torch.nn.CrossEntropyLoss's default ignore_index. Labels are stored aligned
with input_ids (labels[i] is input_ids[i] or IGNORE_INDEX); the shift to next-token targets
happens at training time."""

TOO_LONG = "too long for --seq-length"
EMPTY_DOCUMENT = "empty document"
EMPTY_RESPONSE = "empty response"


@dataclass(frozen=True)
class HandlerOptions:
    """The preprocessing flags handlers act on."""

    json_keys: Tuple[str, ...] = ("text",)
    append_eod: bool = False
    seq_length: Optional[int] = None
    prompt_type: Optional[str] = None
    map_keys: Optional[Mapping[str, Any]] = None
    split_sentences: bool = False
    keep_newlines: bool = False


@dataclass(frozen=True)
class Skip:
    """A record that produces no document. ``invalid`` marks a malformed record (an error
    unless --skip-bad-records); the others (empty, too long) are always skipped and counted."""

    reason: str
    invalid: bool = False


Document = Dict[str, List[List[int]]]
"""Output key -> the sequences (sentences) of one document under that key."""
Outcome = Union[Document, Skip]


class Handler(ABC):
    """Turns a batch of records into documents. Subclasses name their outputs:
    ``<output-prefix><prefix_suffix>_<key>_<level>.bin/.idx`` for each key."""

    prefix_suffix: ClassVar[str] = "_packed"
    packable: ClassVar[bool] = False
    vocab_dtype: ClassVar[bool] = False  # store with the smallest dtype for the vocab (no -100)
    uses_prompt_type: ClassVar[bool] = False
    uses_map_keys: ClassVar[bool] = False

    def __init__(self, tokenizer: Tokenizer, options: HandlerOptions) -> None:
        self.tokenizer = tokenizer
        self.options = options

    @property
    @abstractmethod
    def output_keys(self) -> List[str]: ...

    @property
    def level(self) -> str:
        return "document"

    @abstractmethod
    def encode(self, records: Sequence[Mapping[str, Any]]) -> List[Outcome]:
        """One outcome per record, in order."""

    def too_long(self, sequence: Sequence[int]) -> bool:
        """ModelLink drops samples of seq_length tokens or more (one slot is kept for the shift)."""
        return self.options.seq_length is not None and len(sequence) >= self.options.seq_length

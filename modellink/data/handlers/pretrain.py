"""GeneralPretrainHandler: raw text under --json-keys -> token documents (Megatron's format)."""

from typing import Any, List, Mapping, Sequence

from modellink.data.handlers.base import EMPTY_DOCUMENT, TOO_LONG, Document, Handler, Outcome, Skip
from modellink.data.records import InvalidRecord
from modellink.data.sentences import split_sentences


class GeneralPretrainHandler(Handler):
    """Each --json-keys key becomes its own dataset ``<prefix>_<key>_document`` (or
    ``_sentence`` with --split-sentences, one sequence per sentence). Text is tokenized with the
    tokenizer's own special tokens (e.g. BOS), as Megatron-LM and ModelLink do; --append-eod
    adds the EOD after the last sequence. A record whose text is empty under any key is skipped,
    keeping the keys' documents aligned."""

    prefix_suffix = ""
    vocab_dtype = True

    @property
    def output_keys(self) -> List[str]:
        return list(self.options.json_keys)

    @property
    def level(self) -> str:
        return "sentence" if self.options.split_sentences else "document"

    def _pieces(self, record: Mapping[str, Any]) -> List[List[str]]:
        pieces = []
        for key in self.options.json_keys:
            if key not in record or record[key] is None:
                raise InvalidRecord(f"missing key {key!r}")
            text = record[key]
            if not isinstance(text, str):
                raise InvalidRecord(f"key {key!r} must be a string, got {type(text).__name__}")
            if self.options.split_sentences:
                pieces.append(split_sentences(text, self.options.keep_newlines))
            else:
                pieces.append([text] if text.strip() else [])
        return pieces

    def encode(self, records: Sequence[Mapping[str, Any]]) -> List[Outcome]:
        prepared: List[Any] = []  # per record: a Skip, or the sentence lists to tokenize
        texts: List[str] = []
        for record in records:
            try:
                pieces = self._pieces(record)
            except InvalidRecord as err:
                prepared.append(Skip(str(err), invalid=True))
                continue
            if any(not p for p in pieces):
                prepared.append(Skip(EMPTY_DOCUMENT))
                continue
            prepared.append(pieces)
            texts += [t for p in pieces for t in p]
        ids = iter(self.tokenizer.encode_batch(texts))
        return [p if isinstance(p, Skip) else self._document(p, ids) for p in prepared]

    def _document(self, pieces: List[List[str]], ids) -> Outcome:
        document: Document = {}
        for key, sentences in zip(self.options.json_keys, pieces):
            sequences = [next(ids) for _ in sentences]
            if self.options.append_eod:
                sequences[-1] = sequences[-1] + [self.tokenizer.eod]
            document[key] = sequences
        sequences = [s for seqs in document.values() for s in seqs]
        if any(not s for s in sequences):
            return Skip(EMPTY_DOCUMENT)
        if any(self.too_long(s) for s in sequences):
            return Skip(TOO_LONG)
        return document

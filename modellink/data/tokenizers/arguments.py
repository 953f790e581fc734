"""The tokenizer flags, with Megatron-LM / ModelLink spellings and defaults."""

import argparse

TOKENIZER_TYPES = (
    "PretrainedFromHF",
    "HuggingFaceTokenizer",
    "Llama2Tokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "GPT2BPETokenizer",
    "NullTokenizer",
)


def add_tokenizer_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the tokenizer flags to ``parser`` in a "tokenizer" argument group.

    Vocabulary padding (--make-vocab-size-divisible-by, --padded-vocab-size) and --seq-length
    belong to the training parser and are deliberately not added here.
    """
    group = parser.add_argument_group(title="tokenizer")
    group.add_argument("--tokenizer-type", type=str, default=None, choices=TOKENIZER_TYPES,
                       help="What type of tokenizer to use.")
    group.add_argument("--tokenizer-name-or-path", type=str, default=None,
                       help="Local folder of a Hugging Face tokenizer (PretrainedFromHF).")
    group.add_argument("--tokenizer-model", type=str, default=None,
                       help="Sentencepiece .model file (Llama2Tokenizer, SentencePieceTokenizer, "
                            "GPTSentencePieceTokenizer) or Hugging Face tokenizer folder "
                            "(HuggingFaceTokenizer).")
    group.add_argument("--vocab-file", type=str, default=None,
                       help="Path to the vocab file (GPT2BPETokenizer: vocab.json).")
    group.add_argument("--merge-file", type=str, default=None,
                       help="Path to the BPE merge file (GPT2BPETokenizer: merges.txt).")
    group.add_argument("--vocab-size", type=int, default=None,
                       help="Size of vocab before EOD or padding (NullTokenizer).")
    group.add_argument("--tokenizer-not-use-fast", action="store_true",
                       help="Load the slow (Python) Hugging Face tokenizer instead of the fast one.")
    group.add_argument("--tokenizer-padding-side", type=str, default="right",
                       choices=["left", "right"],
                       help="Padding side of the Hugging Face tokenizer.")
    group.add_argument("--tokenizer-kwargs", type=str, nargs="+", default=None,
                       metavar="KEY VALUE",
                       help="Extra keyword arguments for the Hugging Face tokenizer, as key value "
                            "pairs (e.g. use_fast False); values are read as Python literals.")

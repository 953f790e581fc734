"""build_tokenizer for every --tokenizer-type, on tokenizers built locally in the test."""

import argparse
import json

import pytest
from transformers import AutoTokenizer

from data_helpers import demo  # noqa: F401
from modellink.argument_errors import ArgumentError
from modellink.data.tokenizers import TOKENIZER_TYPES, add_tokenizer_arguments, build_tokenizer

TEXT = "12 + 7 = 19\nThe opposite of hot is cold."


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, demo):  # noqa: F811
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(json.loads(line)["text"] for line in open(demo["pretrain"])))
    return str(path)


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory, corpus_file):
    import sentencepiece

    prefix = tmp_path_factory.mktemp("sp") / "sp"
    sentencepiece.SentencePieceTrainer.train(
        input=corpus_file, model_prefix=str(prefix), vocab_size=120, model_type="bpe",
        bos_id=1, eos_id=2, pad_id=3, unk_id=0, minloglevel=2)
    return f"{prefix}.model"


@pytest.fixture(scope="module")
def gpt2_files(tmp_path_factory, corpus_file):
    from tokenizers import ByteLevelBPETokenizer

    folder = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train([corpus_file], vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    return str(folder / "vocab.json"), str(folder / "merges.txt")


def test_flags_and_defaults():
    args = _args()
    assert args.tokenizer_type is None
    assert args.tokenizer_padding_side == "right" and not args.tokenizer_not_use_fast
    assert {"PretrainedFromHF", "Llama2Tokenizer", "SentencePieceTokenizer", "GPTSentencePieceTokenizer",
            "GPT2BPETokenizer", "NullTokenizer"} <= set(TOKENIZER_TYPES)
    parser = argparse.ArgumentParser()
    add_tokenizer_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    assert not flags & {"--make-vocab-size-divisible-by", "--padded-vocab-size", "--seq-length"}
    assert {"--tokenizer-model", "--vocab-file", "--merge-file", "--vocab-size"} <= flags


def test_pretrained_from_hf(demo):  # noqa: F811
    tokenizer = build_tokenizer(_args("--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path",
                                      demo["tokenizer"], "--tokenizer-padding-side", "left"))
    hf = AutoTokenizer.from_pretrained(demo["tokenizer"])
    assert tokenizer.tokenize(TEXT) == hf(TEXT)["input_ids"]
    assert tokenizer.tokenize(TEXT)[0] == tokenizer.bos == hf.bos_token_id
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad) == (len(hf), hf.eos_token_id, hf.pad_token_id)
    assert tokenizer.detokenize(hf.encode(TEXT, add_special_tokens=False)) == TEXT
    assert tokenizer.hf_tokenizer.padding_side == "left"
    assert tokenizer.encode_batch([TEXT, "1"], add_special_tokens=False) == [
        hf.encode(TEXT, add_special_tokens=False), hf.encode("1", add_special_tokens=False)]
    assert tokenizer.token_to_id("</s>") == hf.eos_token_id and tokenizer.token_to_id("<|nope|>") is None


def test_huggingface_tokenizer_reads_tokenizer_model(demo):  # noqa: F811
    tokenizer = build_tokenizer(_args("--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", demo["tokenizer"]))
    assert tokenizer.tokenize(TEXT) == AutoTokenizer.from_pretrained(demo["tokenizer"])(TEXT)["input_ids"]


def test_gpt2_bpe(gpt2_files):
    vocab, merges = gpt2_files
    tokenizer = build_tokenizer(_args("--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab,
                                      "--merge-file", merges))
    ids = tokenizer.tokenize(TEXT)
    assert tokenizer.detokenize(ids) == TEXT
    assert tokenizer.eod == json.load(open(vocab))["<|endoftext|>"] == tokenizer.pad
    assert tokenizer.bos is None or tokenizer.bos == tokenizer.eod
    assert max(ids) < tokenizer.vocab_size


def test_sentencepiece_family(sentencepiece_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sentencepiece_model)
    plain = sp.encode_as_ids(TEXT)

    llama = build_tokenizer(_args("--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", sentencepiece_model))
    assert llama.tokenize(TEXT) == [sp.bos_id()] + plain
    assert (llama.eod, llama.bos, llama.pad, llama.vocab_size) == (sp.eos_id(), sp.bos_id(), sp.pad_id(), 120)
    assert llama.detokenize(llama.tokenize(TEXT)) == sp.decode_ids(plain)

    gpt = build_tokenizer(_args("--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", sentencepiece_model))
    assert gpt.tokenize(TEXT) == plain and gpt.eod == sp.eos_id()

    megatron = build_tokenizer(_args("--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sentencepiece_model))
    # <CLS>, <SEP>, <EOD>, <MASK> come after the 120 pieces; pad/bos/eos pieces already exist.
    assert megatron.vocab_size == 124 and megatron.eod == 122
    assert (megatron.pad, megatron.bos) == (sp.pad_id(), sp.bos_id())
    ids = megatron.tokenize("1 + 1 = 2<EOD>3 + 3 = 6")
    assert ids == sp.encode_as_ids("1 + 1 = 2") + [122] + sp.encode_as_ids("3 + 3 = 6")
    assert megatron.detokenize(ids) == "1 + 1 = 2<EOD>3 + 3 = 6"


def test_null_tokenizer():
    tokenizer = build_tokenizer(_args("--tokenizer-type", "NullTokenizer", "--vocab-size", "100"))
    assert tokenizer.tokenize("5 6 99") == [5, 6, 99]
    assert (tokenizer.vocab_size, tokenizer.eod, tokenizer.pad, tokenizer.bos) == (101, 100, 100, None)
    assert tokenizer.detokenize([1, 2]) == "1 2" and tokenizer.hf_tokenizer is None
    with pytest.raises(ValueError, match="outside"):
        tokenizer.tokenize("101")


@pytest.mark.parametrize("argv,error,message", [
    ([], ValueError, "--tokenizer-type is required"),
    (["--tokenizer-type", "PretrainedFromHF"], ValueError, "--tokenizer-name-or-path is required"),
    (["--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", "/no/such/dir"], ArgumentError,
     "/no/such/dir: no such tokenizer folder"),
    (["--tokenizer-type", "Llama2Tokenizer"], ValueError, "--tokenizer-model .* is required"),
    (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "/no/x.model"], ArgumentError,
     "/no/x.model: no such file"),
    (["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "/no/v.json"], ValueError, "needs --merge-file"),
    (["--tokenizer-type", "NullTokenizer"], ValueError, "NullTokenizer needs --vocab-size"),
])
def test_missing_flags_and_paths(argv, error, message):
    with pytest.raises(error, match=message):
        build_tokenizer(_args(*argv))


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load sentencepiece model"):
        build_tokenizer(_args("--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", str(tmp_path / "bad.model")))
    (tmp_path / "hf").mkdir()
    with pytest.raises(ValueError, match="cannot load a Hugging Face tokenizer"):
        build_tokenizer(_args("--tokenizer-type", "PretrainedFromHF", "--tokenizer-name-or-path", str(tmp_path / "hf")))

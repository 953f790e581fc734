"""Vocabulary padding, computed by hand: rounded up to --make-vocab-size-divisible-by x the
tensor-parallel size (each TP rank holds an equal, aligned slice), or --padded-vocab-size."""
import argparse

import pytest

from modellink.training.pretrain import padded_vocab_size


@pytest.mark.parametrize("vocab,divisible_by,tp,expected", [
    (100, 128, 1, 128), (100, 128, 2, 256), (101, 1, 2, 102), (100, 1, 4, 100), (250, 8, 4, 256),
])
def test_padding_is_a_multiple_of_divisible_by_times_tp(vocab, divisible_by, tp, expected):
    args = argparse.Namespace(padded_vocab_size=None, make_vocab_size_divisible_by=divisible_by,
                              tensor_model_parallel_size=tp)
    assert padded_vocab_size(vocab, args) == expected


def test_explicit_padded_size_wins():
    args = argparse.Namespace(padded_vocab_size=192, make_vocab_size_divisible_by=128,
                              tensor_model_parallel_size=2)
    assert padded_vocab_size(100, args) == 192

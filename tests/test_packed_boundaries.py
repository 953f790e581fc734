"""Packed fine-tuning rows where the second sample starts with a response token (templates
without a prompt, or a handler that leaves it empty): the last token of the first sample must
not be trained to predict it, positions restart there and attention stays within each sample.
Also a row longer than --seq-length + 1, cut as ModelLink does. Expected values are written out
by hand from the rows below."""
import numpy
import torch

from modellink.data.handlers import IGNORE_INDEX
from modellink.training.data.instruction_batch import InstructionCollator

X = IGNORE_INDEX
# Sample 1: prompt 11 12, response 13 14; sample 2: response 21 22 23 only; then padding.
ROW = {"input_ids": numpy.array([11, 12, 13, 14, 21, 22, 23, 0, 0]),
       "labels": numpy.array([X, X, 13, 14, 21, 22, 23, X, X]),
       "attention_mask": numpy.array([1, 1, 1, 1, 2, 2, 2, 0, 0])}


def test_second_sample_starting_with_a_response_token():
    batch = InstructionCollator(seq_length=8, variable=False, multiple=8)([ROW])
    assert batch["tokens"].tolist() == [[11, 12, 13, 14, 21, 22, 23, 0]]
    # Position i predicts token i + 1: 12->13 and 13->14 in sample 1, 21->22 and 22->23 in
    # sample 2; 14->21 crosses the boundary and padding predicts nothing.
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[0, 13, 14, 0, 22, 23, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    allowed = ~batch["attention_mask"][0, 0]
    segments = torch.tensor([1, 1, 1, 1, 2, 2, 2, 0])
    expected = (segments[:, None] == segments[None, :]) & torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.equal(allowed, expected)


def test_long_row_is_truncated_to_seq_length():
    row = {key: numpy.concatenate([value, value]) for key, value in ROW.items()}  # 18 tokens
    for variable in (False, True):
        batch = InstructionCollator(seq_length=8, variable=variable, multiple=8)([row])
        assert batch["tokens"].tolist() == [[11, 12, 13, 14, 21, 22, 23, 0]]
        assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]

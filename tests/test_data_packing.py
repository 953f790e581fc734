"""Greedy knapsack packing and the rule-based sentence splitter."""

import numpy as np

from modellink.data.packing import greedy_knapsack
from modellink.data.sentences import split_sentences


def test_greedy_knapsack_takes_the_longest_fitting_sample():
    packs = greedy_knapsack(np.array([5, 3, 8, 2, 5, 1]), 10)
    assert packs == [[2, 3], [0, 4], [1, 5]]


def test_greedy_knapsack_places_every_sample_once_within_capacity():
    lengths = np.random.default_rng(0).integers(1, 64, size=2000)
    packs = greedy_knapsack(lengths, 63)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 63 for pack in packs)
    assert sum(lengths) / (63 * len(packs)) > 0.95  # dense


def test_split_sentences():
    text = 'He said "Stop." Then left! Why?  Nobody knows.\nNew line without stop\n\nLast (really.) '
    assert split_sentences(text) == ['He said "Stop."', "Then left!", "Why?", "Nobody knows.",
                                     "New line without stop", "Last (really.)"]
    assert split_sentences(text, keep_newlines=True)[3:5] == ["Nobody knows.\n", "New line without stop\n\n"]
    assert split_sentences("   ") == [] and split_sentences("3.5 is a number") == ["3.5 is a number"]

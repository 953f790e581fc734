"""Which letter a chat reply names, when it names more than one: ModelLink's MMLU/C-Eval rule
(the last letter followed by a full stop on the first line, else the reply's first letter),
so that scores agree with ModelLink's on the same replies."""
import pytest

from modellink.evaluation.scoring import written_label

LETTERS = ["A", "B", "C", "D"]


@pytest.mark.parametrize("reply,expected", [
    ("B. Paris", "B"),
    ("A is wrong; the answer is D.", "D"),
    ("I think a good choice is C.", "C"),
    ("The answer is C. A and B are wrong.", "C"),
    ("B\nA. is what some say", "B"),
    ("  D", "D"),
    ("none of them", None),
])
def test_letter_named_in_a_reply(reply, expected):
    assert written_label(reply, LETTERS) == expected


def test_yes_no_labels_by_first_word():
    assert written_label("Yes, it is; no doubt", ["yes", "no"]) == "yes"
    assert written_label("The answer is no.", ["yes", "no"]) == "no"

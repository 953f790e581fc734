"""What a reply is scored on, for replies where the rule matters: which letter a chat reply
names when it names more than one (ModelLink's MMLU/C-Eval rule: the last letter followed by a
full stop on the first line, else the reply's first letter), GSM8K's number when the reply
holds several, and where a reply is cut when it holds several stop strings."""
import pytest

from modellink.evaluation.generation_benchmarks import final_number
from modellink.evaluation.scoring import truncate, written_label

LETTERS = ["A", "B", "C", "D"]


@pytest.mark.parametrize("reply,expected", [
    ("B. Paris", "B"),
    ("A is wrong; the answer is D.", "D"),
    ("I think a good choice is C.", "C"),
    ("The answer is C. A and B are wrong.", "C"),
    ("A. looks right, but it is C.", "C"),
    ("B\nA. is what some say", "B"),
    ("  D", "D"),
    ("none of them", None),
])
def test_letter_named_in_a_reply(reply, expected):
    assert written_label(reply, LETTERS) == expected


def test_yes_no_labels_by_first_word():
    assert written_label("Yes, it is; no doubt", ["yes", "no"]) == "yes"
    assert written_label("The answer is no.", ["yes", "no"]) == "no"


@pytest.mark.parametrize("reply,expected", [
    ("3 + 4 = 7 apples, so #### 7 (not 8)", "7"),
    ("first 12, then 1,250.0 in all", "1250"),
    ("the answer is -3 and 5 is wrong", "-3"),
    ("no number here", None),
])
def test_gsm8k_number_in_a_reply_with_several(reply, expected):
    assert final_number(reply) == expected


def test_reply_is_cut_at_the_first_stop_string():
    assert truncate("12\n\nQ: next\nA: 3", ["Q:", "\n\n"]) == "12"
    assert truncate("12", ["Q:"]) == "12"

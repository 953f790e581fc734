"""Built-in demo data: a synthetic corpus a tiny model can learn in minutes on a CPU.

``python -m modellink.data.demo --output-dir DIR [--num-train N] [--seed S]`` writes

* ``DIR/pretrain.jsonl``    ``{"text": ...}`` documents, several statements each
  ("12 + 7 = 19", "The opposite of hot is cold.", ...);
* ``DIR/instruction.jsonl`` the same statements as Alpaca records
  ``{"instruction": "12 + 7 =", "input": "", "output": "19"}``;
* ``DIR/test.jsonl``        held-out arithmetic ``{"question": "3 + 4 =", "answer": "7"}``;
  no operand pair in it appears in the training files, so exact match measures
  generalisation, not recall;
* ``DIR/pairs_train.jsonl`` and ``DIR/pairs_test.jsonl`` preference pairs for DPO, records
  ``{"instruction": "27 + 15 =", "input": "", "chosen": "42", "rejected": "32"}`` (what
  preprocess_data.py's AlpacaStylePairwiseHandler reads): the right answer preferred to a
  plausible wrong one; the test pairs ask the test questions, so they are held out too;
* ``DIR/tokenizer/``        a byte-level BPE tokenizer trained on the corpus with the
  ``tokenizers`` library (digits split one per token so arithmetic is learnable), saved as a
  Hugging Face tokenizer folder with ``<s>``/``</s>``/``<pad>``/``<unk>`` special tokens.

Everything is a pure function of (num_train, seed).
"""

import argparse
import json
import os
import random
from typing import Dict, Iterator, List, Sequence, Tuple

MAX_OPERAND = 49
STATEMENTS_PER_DOCUMENT = 8
NUM_TEST = 200
NUM_TRAIN_PAIRS = 1000
VOCAB_SIZE = 512
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")

# (subject template, answer) pairs; every statement reads "<question> <answer>."
FACTS: Tuple[Tuple[str, str], ...] = (
    ("The opposite of hot is", "cold"), ("The opposite of big is", "small"),
    ("The opposite of up is", "down"), ("The opposite of day is", "night"),
    ("The opposite of fast is", "slow"), ("The opposite of old is", "new"),
    ("The opposite of open is", "closed"), ("The opposite of happy is", "sad"),
    ("The colour of the sky is", "blue"), ("The colour of grass is", "green"),
    ("The colour of snow is", "white"), ("The colour of coal is", "black"),
    ("The colour of a banana is", "yellow"), ("The colour of blood is", "red"),
    ("A dog says", "woof"), ("A cat says", "meow"), ("A cow says", "moo"),
    ("A duck says", "quack"), ("A sheep says", "baa"), ("An owl says", "hoot"),
    ("The capital of France is", "Paris"), ("The capital of Italy is", "Rome"),
    ("The capital of Japan is", "Tokyo"), ("The capital of Spain is", "Madrid"),
    ("The capital of Egypt is", "Cairo"), ("The capital of Peru is", "Lima"),
    ("The day after Monday is", "Tuesday"), ("The day after Friday is", "Saturday"),
    ("The month after May is", "June"), ("The month after October is", "November"),
    ("Water freezes at zero degrees, so ice is", "cold"),
    ("A triangle has sides numbering", "three"), ("A square has sides numbering", "four"),
)


def _arithmetic_pairs(rng: random.Random) -> Tuple[List[Tuple[int, str, int]], List[Tuple[int, str, int]]]:
    """All (a, op, b) problems with non-negative results, split into (train, test)."""
    problems = [(a, "+", b) for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)]
    problems += [(a, "-", b) for a in range(MAX_OPERAND + 1) for b in range(a + 1)]
    rng.shuffle(problems)
    return problems[NUM_TEST:], problems[:NUM_TEST]


def _solve(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def wrong_answer(a: int, op: str, b: int, rng: random.Random) -> int:
    """A mistake a learner makes: the carry (or borrow) forgotten, where there is one, or one
    digit of the answer off by one; never the right answer and never negative."""
    right = _solve(a, op, b)
    digits = str(right)
    mistakes = set()
    for position, digit in enumerate(digits):
        for changed in (int(digit) - 1, int(digit) + 1):
            # A leading zero would only spell a shorter number.
            if 0 <= changed <= 9 and not (position == 0 and changed == 0 and len(digits) > 1):
                mistakes.add(int(digits[:position] + str(changed) + digits[position + 1:]))
    tens, units = divmod(a, 10)
    b_tens, b_units = divmod(b, 10)
    if op == "+" and units + b_units >= 10:
        mistakes.add((tens + b_tens) * 10 + (units + b_units) % 10)
    if op == "-" and units < b_units:  # "the smaller digit from the larger one"
        mistakes.add((tens - b_tens) * 10 + b_units - units)
    mistakes.discard(right)
    return rng.choice(sorted(mistakes))


def _pairs(problems: Sequence[Tuple[int, str, int]], rng: random.Random) -> List[Dict[str, str]]:
    return [{"instruction": f"{a} {op} {b} =", "input": "", "chosen": str(_solve(a, op, b)),
             "rejected": str(wrong_answer(a, op, b, rng))} for a, op, b in problems]


def _training_examples(num_train: int, rng: random.Random,
                       problems: Sequence[Tuple[int, str, int]]) -> Iterator[Tuple[str, str]]:
    """Yields num_train (question, answer) pairs: three quarters arithmetic, one quarter facts."""
    for _ in range(num_train):
        if rng.random() < 0.75:
            a, op, b = rng.choice(problems)
            yield f"{a} {op} {b} =", str(_solve(a, op, b))
        else:
            question, answer = rng.choice(FACTS)
            yield question, answer


def _statement(question: str, answer: str) -> str:
    return f"{question} {answer}" if question.endswith("=") else f"{question} {answer}."


def _write_jsonl(path: str, rows: Sequence[Dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _train_tokenizer(texts: Sequence[str], output_dir: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Llama-style: the tokenizer itself prepends <s> when asked for special tokens.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        pad_token="<pad>")
    hf_tokenizer.save_pretrained(output_dir)


def generate_demo(output_dir: str, num_train: int = 4000, seed: int = 1234) -> Dict[str, str]:
    """Writes the demo corpus, instruction set, test split, preference pairs and tokenizer;
    returns their paths."""
    if num_train < 1:
        raise ValueError(f"num_train must be positive, got {num_train}")
    os.makedirs(output_dir, exist_ok=True)
    rng = random.Random(seed)
    train_problems, test_problems = _arithmetic_pairs(rng)
    examples = list(_training_examples(num_train, rng, train_problems))

    statements = [_statement(q, a) for q, a in examples]
    documents = ["\n".join(statements[i:i + STATEMENTS_PER_DOCUMENT])
                 for i in range(0, len(statements), STATEMENTS_PER_DOCUMENT)]
    # Drawn after the examples, so the pairs leave the other files as they were without them.
    train_pairs = _pairs([rng.choice(train_problems) for _ in range(NUM_TRAIN_PAIRS)], rng)
    test_pairs = _pairs(test_problems, rng)
    paths = {name: os.path.join(output_dir, f"{name}.jsonl")
             for name in ("pretrain", "instruction", "test", "pairs_train", "pairs_test")}
    _write_jsonl(paths["pretrain"], [{"text": d} for d in documents])
    _write_jsonl(paths["instruction"],
                 [{"instruction": q, "input": "", "output": a} for q, a in examples])
    _write_jsonl(paths["test"], [{"question": f"{a} {op} {b} =", "answer": str(_solve(a, op, b))}
                                 for a, op, b in test_problems])
    _write_jsonl(paths["pairs_train"], train_pairs)
    _write_jsonl(paths["pairs_test"], test_pairs)
    paths["tokenizer"] = os.path.join(output_dir, "tokenizer")
    _train_tokenizer(documents, paths["tokenizer"])
    return paths


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="folder to write the demo files into")
    parser.add_argument("--num-train", type=int, default=4000,
                        help="number of training statements (default 4000)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    args = parser.parse_args(argv)
    for name, path in generate_demo(args.output_dir, args.num_train, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()

"""ModelLink's fine-tuning flags (instruction datasets), added to the training parser by
modellink.arguments, and their checks against the rest of the command line."""
from __future__ import annotations

import argparse

from modellink.argument_errors import ArgumentError
from modellink.data.templates import get_template
from modellink.training.data.instruction_batch import LENGTH_MULTIPLE


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("fine-tuning (ModelLink)")
    g.add_argument("--is-instruction-dataset", action="store_true",
                   help="--data-path names instruction datasets written by preprocess_data.py "
                        "(PREFIX_packed_{input_ids,attention_mask,labels}_document); loss only "
                        "on response tokens, packed samples attend and count positions within "
                        "themselves (--reset-attention-mask and --reset-position-ids implied)")
    g.add_argument("--variable-seq-lengths", action="store_true",
                   help="pad each micro-batch only to its longest sample (with pipeline "
                        "parallelism: each step to its longest micro-batch)")
    g.add_argument("--prompt-type", default=None,
                   help="prompt template the data was preprocessed with; recorded in the "
                        "checkpoint and used by inference and evaluation")
    g.add_argument("--no-shuffle", action="store_true",
                   help="instruction datasets: serve samples in file order, every epoch")
    g.add_argument("--full-shuffle-instruction-dataset", action="store_true",
                   help="shuffle the instruction samples of all epochs together, not each epoch "
                        "on its own")
    g.add_argument("--load-checkpoint-loosely", action="store_true",
                   help="load --load checkpoints whose weights miss or add some (strict=False): "
                        "the ones that fit are loaded, the others named on stderr")
    g.add_argument("--pad-to-multiple-of", type=int, default=None,
                   help=f"with --variable-seq-lengths, pad each micro-batch to a multiple of "
                        f"this length (default {LENGTH_MULTIPLE})")


def validate_finetune_args(args: argparse.Namespace) -> None:
    if args.prompt_type is not None:
        try:
            get_template(args.prompt_type)
        except ValueError as exc:
            raise ArgumentError(f"--prompt-type: {exc}") from None
    if args.pad_to_multiple_of is not None:
        if not args.variable_seq_lengths:
            # Without it every batch holds --seq-length positions, as in ModelLink.
            raise ArgumentError("--pad-to-multiple-of needs --variable-seq-lengths")
        if args.pad_to_multiple_of < 1:
            raise ArgumentError(f"--pad-to-multiple-of must be >= 1, got "
                                f"{args.pad_to_multiple_of}")
    else:
        args.pad_to_multiple_of = LENGTH_MULTIPLE
    if args.is_instruction_dataset:
        if args.mock_data:
            raise ArgumentError("--is-instruction-dataset needs --data-path PREFIX (mock data "
                                "is pretraining data)")
        return
    for flag, value in (("--variable-seq-lengths", args.variable_seq_lengths),
                        ("--no-shuffle", args.no_shuffle),
                        ("--full-shuffle-instruction-dataset",
                         args.full_shuffle_instruction_dataset)):
        if value:
            # Pretraining samples all hold --seq-length tokens and megatron-core's GPTDataset
            # always shuffles, so none of these would do anything there.
            raise ArgumentError(f"{flag} applies to instruction data: add "
                                f"--is-instruction-dataset")

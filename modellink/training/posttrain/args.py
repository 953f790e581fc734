"""Post-training flags (ModelLink's names and defaults) and their checks against the rest of
the command line, added to the training parser by modellink.arguments."""
from __future__ import annotations

import argparse
import os

from modellink.argument_errors import require
from modellink.models.lora import lora_enabled
from modellink.training.checkpoint.checkpointing import TRACKER_FILENAME
from modellink.training.posttrain.dpo_loss import LOSS_TYPES

# "orm" (outcome reward model) is MindSpeed-LLM's later name for the reward-model stage.
STAGES = ("sft", "dpo", "rm", "orm")


def add_posttrain_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("post-training (ModelLink)")
    g.add_argument("--stage", default=None, choices=STAGES,
                   help="sft: instruction fine-tuning (as without the flag); dpo: direct "
                        "preference optimisation on --is-pairwise-dataset data; rm (or orm, "
                        "MindSpeed-LLM's name): a reward model (scalar value head, pairwise "
                        "Bradley-Terry loss) on that data")
    g.add_argument("--is-pairwise-dataset", action="store_true",
                   help="--data-path names pairwise datasets written by preprocess_data.py "
                        "(PREFIX_packed_{chosen,rejected}_{input_ids,labels}_document)")
    g.add_argument("--dpo-beta", type=float, default=0.1,
                   help="DPO temperature: rewards are beta * (policy - reference) log-probs")
    g.add_argument("--dpo-loss-type", default="sigmoid", choices=LOSS_TYPES)
    g.add_argument("--dpo-label-smoothing", type=float, default=0.0,
                   help="conservative DPO: the assumed probability that a pair's preference is "
                        "flipped (sigmoid loss), in [0, 0.5)")
    g.add_argument("--pref-ftx", type=float, default=0.0,
                   help="weight of the chosen response's mean token NLL added to the DPO loss")
    g.add_argument("--ref-model", default=None,
                   help="checkpoint folder of the DPO reference model (default: the weights "
                        "--load gives the policy), frozen, in the same parallel layout")


def validate_posttrain_args(args: argparse.Namespace) -> None:
    if args.stage == "orm":
        args.stage = "rm"
    if args.stage != "dpo":
        for flag, given in (("--ref-model", args.ref_model is not None),
                            ("--dpo-beta", args.dpo_beta != 0.1),
                            ("--dpo-loss-type", args.dpo_loss_type != "sigmoid"),
                            ("--dpo-label-smoothing", args.dpo_label_smoothing != 0.0),
                            ("--pref-ftx", args.pref_ftx != 0.0)):
            require(not given, f"{flag} applies to DPO: add --stage dpo")
    if args.stage not in ("dpo", "rm"):
        require(not args.is_pairwise_dataset, "--is-pairwise-dataset applies to preference "
                                              "training: add --stage dpo or --stage rm")
        require(args.stage != "sft" or args.is_instruction_dataset,
                "--stage sft trains on instruction data: add --is-instruction-dataset")
        return
    require(args.is_pairwise_dataset, f"--stage {args.stage} trains on chosen/rejected pairs: "
                                      f"add --is-pairwise-dataset (data from preprocess_data.py "
                                      f"--handler-name AlpacaStylePairwiseHandler)")
    # ModelLink's preference scripts pass --is-instruction-dataset too: pairs are instruction data.
    args.is_instruction_dataset = True
    if args.stage == "dpo":
        _validate_dpo_args(args)
    else:
        require(not lora_enabled(args), "--stage rm with LoRA is not supported yet (the value "
                                        "head would need training beside the adapters)")
    require(args.context_parallel_size == 1,
            f"--stage {args.stage} with --context-parallel-size > 1 is not supported yet "
            f"(sequence scores would need a reduction over the context-parallel group)")
    require(not args.mock_data, f"--stage {args.stage} needs --data-path with pairwise data, "
                                f"not --mock-data")


def _validate_dpo_args(args: argparse.Namespace) -> None:
    require(args.dpo_beta > 0, f"--dpo-beta must be > 0, got {args.dpo_beta}")
    require(0 <= args.dpo_label_smoothing < 0.5,
            f"--dpo-label-smoothing must be in [0, 0.5), got {args.dpo_label_smoothing}")
    require(args.dpo_label_smoothing == 0 or args.dpo_loss_type == "sigmoid",
            f"--dpo-label-smoothing applies to --dpo-loss-type sigmoid, not "
            f"{args.dpo_loss_type}")
    require(args.pref_ftx >= 0, f"--pref-ftx must be >= 0, got {args.pref_ftx}")
    if args.ref_model is not None:
        require(not lora_enabled(args), "--ref-model with LoRA: the reference is the base "
                                        "model with the adapters disabled; drop --ref-model")
        require(os.path.isfile(os.path.join(args.ref_model, TRACKER_FILENAME)),
                f"--ref-model {args.ref_model} holds no checkpoint (no {TRACKER_FILENAME})")

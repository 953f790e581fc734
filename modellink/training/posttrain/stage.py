"""`--stage`: which forward step the training loop runs, and `trainer.py`'s entry point."""
from __future__ import annotations

import argparse
from typing import List, Sequence

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.argument_errors import ArgumentError
from modellink.training.loop import ForwardStep, TrainState, language_model_step
from modellink.training.posttrain.dpo_step import ROWS_PER_PAIR, DPOForwardStep
from modellink.training.posttrain.reference import build_reference
from modellink.training.posttrain.rm_step import ROWS_PER_PAIR as RM_ROWS_PER_PAIR
from modellink.training.posttrain.rm_step import RewardForwardStep


def stage_forward_step(args: argparse.Namespace, config: TransformerConfig,
                       model: List[torch.nn.Module], loaded_iteration: int) -> ForwardStep:
    """Called once the policy's checkpoint is loaded (DPO's default reference is its weights)."""
    if args.stage == "rm":
        return ForwardStep(RewardForwardStep(args), rows_per_sample=RM_ROWS_PER_PAIR)
    if args.stage != "dpo":
        return language_model_step(args)
    reference = build_reference(args, config, model, loaded_iteration)
    return ForwardStep(DPOForwardStep(args, model, reference), rows_per_sample=ROWS_PER_PAIR)


def posttrain(argv: Sequence[str]) -> TrainState:
    """trainer.py: pretrain_gpt.py's run with a --stage named."""
    from modellink.training.pretrain import pretrain

    if not any(arg == "--stage" or arg.startswith("--stage=") for arg in argv):
        raise ArgumentError("trainer.py needs --stage sft|dpo|rm (pretrain_gpt.py pretrains)")
    return pretrain(argv)


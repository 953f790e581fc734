"""The `args` namespace stored in a written Megatron checkpoint.

`pretrain_gpt.py --load` compares its layout attributes with the run's, so they are produced
by the training parser itself from the family's flags plus the target layout.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any, Dict, List

import torch

from modellink.arguments import parse_args
from modellink.checkpoint.layout import ParallelLayout
from modellink.models.families import FamilySettings, training_flags

DTYPE_FLAGS = {torch.bfloat16: ["--bf16"], torch.float16: ["--fp16"], torch.float32: []}


def padded_vocab(vocab_size: int, tp: int, divisible_by: int) -> int:
    """As the training side pads: up to a multiple of make-vocab-size-divisible-by x TP."""
    multiple = divisible_by * tp
    return -(-vocab_size // multiple) * multiple


def layout_flags(layout: ParallelLayout, moe: bool) -> List[str]:
    flags = ["--tensor-model-parallel-size", str(layout.tp),
             "--pipeline-model-parallel-size", str(layout.pp),
             "--expert-model-parallel-size", str(layout.ep)]
    if layout.layer_list is not None:
        flags += ["--num-layer-list", ",".join(map(str, layout.layer_list))]
    if layout.vpp_layers is not None:
        flags += ["--num-layers-per-virtual-pipeline-stage", str(layout.vpp_layers)]
    if moe and layout.tp > 1:
        flags.append("--sequence-parallel")  # megatron-core requires it for MoE with TP
    return flags


def model_flags(settings: FamilySettings, config: Dict[str, Any], layout: ParallelLayout,
                padded: int, dtype: torch.dtype) -> List[str]:
    """Everything `pretrain_gpt.py` needs to build the model this checkpoint holds."""
    return (training_flags(settings, config) + layout_flags(layout, settings.moe)
            + ["--padded-vocab-size", str(padded)] + DTYPE_FLAGS[dtype])


def args_from_hf(flags: List[str], layout: ParallelLayout, padded: int,
                 config: Dict[str, Any]) -> argparse.Namespace:
    # The training parser needs a run to validate; these placeholders describe a minimal one.
    placeholders = ["--micro-batch-size", "1", "--global-batch-size", str(layout.pp * layout.ep),
                    "--train-iters", "0", "--lr", "0", "--mock-data"]
    args = parse_args(flags + placeholders, world_size=layout.tp * layout.pp * layout.ep)
    args.padded_vocab_size = padded
    args.hf_config = config  # lets export write back the exact config.json
    return args


def resharded_args(source: argparse.Namespace, layout: ParallelLayout,
                   padded: int) -> argparse.Namespace:
    args = copy.copy(source)
    args.tensor_model_parallel_size = layout.tp
    args.pipeline_model_parallel_size = layout.pp
    args.expert_model_parallel_size = layout.ep
    args.pipeline_layers = (
        list(layout.layer_list) if layout.layer_list is not None else None)
    args.num_layer_list = (",".join(map(str, layout.layer_list))
                           if layout.layer_list is not None else None)
    args.num_layers_per_virtual_pipeline_stage = layout.vpp_layers
    args.virtual_pipeline_model_parallel_size = layout.vpp
    args.world_size = layout.tp * layout.pp * layout.ep
    args.data_parallel_size = layout.ep
    args.padded_vocab_size = padded
    args.use_distributed_optimizer = False  # the optimizer state is not carried over
    if getattr(args, "num_experts", None) is not None and layout.tp > 1:
        args.sequence_parallel = True
    return args

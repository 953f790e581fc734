"""Where each layer lives in a Megatron checkpoint: pipeline stages, virtual chunks, ranks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Tuple

from modellink.checkpoint.errors import ConversionError


@dataclass(frozen=True)
class ParallelLayout:
    tp: int
    pp: int
    ep: int
    # stage -> virtual chunk -> global layer indices (megatron-core numbers them locally).
    stages: Tuple[Tuple[Tuple[int, ...], ...], ...]
    layer_list: Optional[Tuple[int, ...]] = None
    vpp_layers: Optional[int] = None

    @property
    def vpp(self) -> Optional[int]:
        chunks = len(self.stages[0])
        return chunks if chunks > 1 else None

    def rank_dir(self, tp_rank: int, pp_rank: int, ep_rank: int) -> str:
        """Megatron-LM's mp_rank_XX[_YYY][_ZZZ]: tp, then pp and ep ranks when used."""
        name = f"mp_rank_{tp_rank:02d}"
        if self.pp > 1:
            name += f"_{pp_rank:03d}"
        if self.ep > 1:
            name += f"_{ep_rank:03d}"
        return name

    def model_key(self, chunk: int) -> str:
        return "model" if self.vpp is None else f"model{chunk}"

    def locate(self, layer: int) -> Tuple[int, int, int]:
        """(stage, chunk, local index) of a global layer."""
        for stage, chunks in enumerate(self.stages):
            for chunk, layers in enumerate(chunks):
                if layer in layers:
                    return stage, chunk, layers.index(layer)
        raise KeyError(layer)

    def is_first(self, stage: int, chunk: int) -> bool:
        return stage == 0 and chunk == 0

    def is_last(self, stage: int, chunk: int) -> bool:
        return stage == self.pp - 1 and chunk == len(self.stages[stage]) - 1


def build_layout(num_layers: int, tp: int, pp: int, ep: int = 1,
                 layer_list: Optional[List[int]] = None,
                 vpp_layers: Optional[int] = None) -> ParallelLayout:
    """Validate the sizes (naming the converter's flags) and place every layer."""
    for flag, value in (("--target-tensor-parallel-size", tp),
                        ("--target-pipeline-parallel-size", pp),
                        ("--target-expert-parallel-size", ep)):
        if value < 1:
            raise ConversionError(f"{flag} must be >= 1, got {value}")
    if layer_list is not None:
        if vpp_layers is not None:
            raise ConversionError("--num-layer-list cannot be combined with "
                                  "--num-layers-per-virtual-pipeline-stage")
        if len(layer_list) != pp or sum(layer_list) != num_layers or min(layer_list) < 1:
            raise ConversionError(f"--num-layer-list {','.join(map(str, layer_list))} must have "
                                  f"{pp} positive entries summing to {num_layers} layers")
        starts = [sum(layer_list[:s]) for s in range(pp)]
        stages = tuple((tuple(range(start, start + n)),) for start, n in zip(starts, layer_list))
        return ParallelLayout(tp, pp, ep, stages, tuple(layer_list), None)
    if num_layers % pp:
        raise ConversionError(f"{num_layers} layers are not divisible by "
                              f"--target-pipeline-parallel-size {pp}; use --num-layer-list")
    per_stage = num_layers // pp
    chunk = per_stage
    if vpp_layers is not None:
        if pp == 1 or vpp_layers < 1 or per_stage % vpp_layers:
            raise ConversionError(f"--num-layers-per-virtual-pipeline-stage {vpp_layers} needs "
                                  f"--target-pipeline-parallel-size > 1 and must divide the "
                                  f"{per_stage} layers per stage")
        chunk = vpp_layers
    chunks = per_stage // chunk
    # megatron-core's interleaved order: chunk v of stage p starts at (v * pp + p) * chunk.
    stages = tuple(
        tuple(tuple(range((v * pp + p) * chunk, (v * pp + p + 1) * chunk)) for v in range(chunks))
        for p in range(pp))
    return ParallelLayout(tp, pp, ep, stages, None, vpp_layers if chunks > 1 else None)


def layout_from_args(args: argparse.Namespace) -> ParallelLayout:
    """The layout a Megatron checkpoint was saved with, from its stored args."""
    return build_layout(args.num_layers, args.tensor_model_parallel_size,
                        args.pipeline_model_parallel_size,
                        getattr(args, "expert_model_parallel_size", 1),
                        getattr(args, "pipeline_layers", None),
                        getattr(args, "num_layers_per_virtual_pipeline_stage", None))

"""Write a Megatron-LM checkpoint (the layout `pretrain_gpt.py --load` reads) stage by stage.

Only one pipeline stage's shards are in memory at a time: its layers are pulled from the
source group by group, split for every (tensor, expert) rank, and saved before the next stage.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Tuple, Union

import torch
from tqdm import tqdm

from modellink.checkpoint.layout import ParallelLayout
from modellink.checkpoint.mappings import EMBEDDING, OUTPUT, Group, ModelShape
from modellink.checkpoint.shard import (
    LINEAR_MODULES, expert_owner, pad_rows, split, split_expert_name)
from modellink.checkpoint.split_rules import SplitRules

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
MODEL_FILENAME = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0

# A source gives canonical tensors, whole or as row blocks to concatenate.
Canonical = Dict[str, Union[torch.Tensor, List[torch.Tensor]]]
Source = Callable[[Group], Canonical]
RankDicts = Dict[Tuple[int, int], Dict[str, object]]


def _blocks(value: Union[torch.Tensor, List[torch.Tensor]]) -> List[torch.Tensor]:
    return value if isinstance(value, list) else [value]


def _put(dicts: RankDicts, name: str, value: Union[torch.Tensor, List[torch.Tensor]],
         layout: ParallelLayout, rules: SplitRules, ep_rank: int = -1) -> None:
    """Split over TP and store on every expert rank (or just `ep_rank`)."""
    for tp_rank, shard in enumerate(split(name, _blocks(value), layout.tp, rules)):
        for ep in range(layout.ep):
            if ep_rank in (-1, ep):
                dicts[(tp_rank, ep)][name] = shard
    module = name.rsplit(".", 1)[0]
    if module.endswith(LINEAR_MODULES):
        for key in dicts:
            if ep_rank in (-1, key[1]):
                dicts[key][module + "._extra_state"] = None


def _chunk_dicts(read: Source, shape: ModelShape, layout: ParallelLayout, stage: int,
                 chunk: int, padded_vocab: int, rules: SplitRules, bar: tqdm) -> RankDicts:
    dicts: RankDicts = {(t, e): {} for t in range(layout.tp) for e in range(layout.ep)}
    first, last = layout.is_first(stage, chunk), layout.is_last(stage, chunk)
    if first:
        group = read(Group("embedding"))
        _put(dicts, EMBEDDING, pad_rows(_blocks(group.pop(EMBEDDING)), padded_vocab), layout,
             rules)
        for name, tensor in group.items():  # e.g. an embedding norm
            _put(dicts, name, tensor, layout, rules)
        bar.update()
    for local, layer in enumerate(layout.stages[stage][chunk]):
        prefix = f"decoder.layers.{layer}."
        for name, tensor in read(Group("layer", layer)).items():
            rel = name[len(prefix):]
            if "local_experts." in rel:
                head, expert, rest = split_expert_name(rel)
                ep_rank, local_expert = expert_owner(expert, shape.num_experts, layout.ep)
                _put(dicts, f"decoder.layers.{local}.{head}{local_expert}.{rest}", tensor,
                     layout, rules, ep_rank)
            else:
                _put(dicts, f"decoder.layers.{local}.{rel}", tensor, layout, rules)
        bar.update()
    if last:
        final = read(Group("final"))
        for name, tensor in final.items():  # the final norm (weight, and bias if any)
            if name != OUTPUT:
                _put(dicts, name, tensor, layout, rules)
        if shape.reward:
            # The value head is replicated, whole, on every rank, with no extra state.
            head = torch.cat(_blocks(final[OUTPUT]), dim=0)
            for key in dicts:
                dicts[key][OUTPUT] = head
        elif OUTPUT in final:
            _put(dicts, OUTPUT, pad_rows(_blocks(final[OUTPUT]), padded_vocab), layout, rules)
        elif not first:
            # Tied embeddings: the last stage keeps its own copy of the embedding as the head.
            embedding = pad_rows(_blocks(read(Group("embedding"))[EMBEDDING]), padded_vocab)
            _put(dicts, OUTPUT, embedding, layout, rules)
        else:
            for key in dicts:
                dicts[key]["output_layer._extra_state"] = None
        bar.update()
    return dicts


def _save_stage(per_chunk: List[RankDicts], layout: ParallelLayout, args: argparse.Namespace,
                iter_dir: str, stage: int, iteration: int) -> None:
    """A function of its own so that no loop variable (the last rank's state) keeps this
    stage's tensors alive while the next stage is built."""
    for (tp_rank, ep_rank) in per_chunk[0]:
        state: Dict[str, object] = {"args": args, "checkpoint_version": CHECKPOINT_VERSION,
                                    "iteration": iteration}
        for c, dicts in enumerate(per_chunk):
            state[layout.model_key(c)] = dicts[(tp_rank, ep_rank)]
        rank_dir = os.path.join(iter_dir, layout.rank_dir(tp_rank, stage, ep_rank))
        os.makedirs(rank_dir, exist_ok=True)
        torch.save(state, os.path.join(rank_dir, MODEL_FILENAME))


def write_megatron(read: Source, shape: ModelShape, layout: ParallelLayout,
                   args: argparse.Namespace, out_dir: str, iteration: int, rules: SplitRules) -> None:
    """Write `iter_XXXXXXX/mp_rank_*/model_optim_rng.pt` and the tracker under `out_dir`."""
    iter_dir = os.path.join(out_dir, f"iter_{iteration:07d}")
    for stage in range(layout.pp):
        chunks = layout.stages[stage]
        total = sum(len(c) for c in chunks) + (stage == 0) + (stage == layout.pp - 1)
        with tqdm(total=total, desc=f"write stage {stage + 1}/{layout.pp}", unit="group",
                  leave=False) as bar:
            per_chunk: List[RankDicts] = [
                _chunk_dicts(read, shape, layout, stage, c, args.padded_vocab_size, rules, bar)
                for c in range(len(chunks))]
        _save_stage(per_chunk, layout, args, iter_dir, stage, iteration)
        del per_chunk
    with open(os.path.join(out_dir, TRACKER_FILENAME), "w") as handle:
        handle.write(str(iteration))

"""Read a Megatron-LM checkpoint at any layout as canonical (unsharded, global) groups.

Rank files are loaded one pipeline stage at a time (sequential reads are the fastest way in)
and dropped when the reader moves on, so at most one stage is held.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Tuple

import torch

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.layout import ParallelLayout, layout_from_args
from modellink.checkpoint.mappings import FINAL_NORM, OUTPUT, Group, ModelShape
from modellink.checkpoint.megatron_writer import MODEL_FILENAME, TRACKER_FILENAME
from modellink.checkpoint.rules import AttentionShape
from modellink.checkpoint.safe_load import load_pt
from modellink.checkpoint.shard import merge, split_expert_name
from modellink.checkpoint.split_rules import split_rules
from modellink.models.moe import dense_layers
from modellink.models.value_head import is_reward_model


def _load(path: str) -> Dict[str, Any]:
    return load_pt(path, ConversionError)


class MegatronSource:
    """Canonical groups from `<root>/iter_*/mp_rank_*/model_optim_rng.pt`."""

    def __init__(self, root: str) -> None:
        tracker = os.path.join(root, TRACKER_FILENAME)
        if not os.path.isfile(tracker):
            raise ConversionError(f"--load-dir {root} is not a Megatron checkpoint "
                                  f"(no {TRACKER_FILENAME})")
        text = open(tracker).read().strip()
        self.iteration = 0 if text == "release" else int(text) if text.isdigit() else -1
        if self.iteration < 0:
            raise ConversionError(f"corrupt {tracker}: {text!r}")
        self.iter_dir = os.path.join(root, "release" if text == "release"
                                     else f"iter_{self.iteration:07d}")
        first = self._path_guess()
        self.args: argparse.Namespace = _load(first)["args"]
        self.layout: ParallelLayout = layout_from_args(self.args)
        missing = [p for p in self._all_paths() if not os.path.isfile(p)]
        if missing:
            raise ConversionError(f"checkpoint shard missing: {missing[0]} "
                                  f"({len(missing)} of {len(self._all_paths())} missing)")
        self.shape = ModelShape(
            num_layers=self.args.num_layers,
            attention=AttentionShape(self.args.num_attention_heads, self.args.num_query_groups,
                                     self.args.kv_channels
                                     or self.args.hidden_size // self.args.num_attention_heads),
            num_experts=getattr(self.args, "num_experts", None),
            tied=not self.args.untie_embeddings_and_output_weights,
            vocab_size=self.recorded_vocab_size() or self.args.padded_vocab_size,
            reward=is_reward_model(self.args),
            # Checkpoints written before DeepSeek's flags existed have every layer MoE.
            dense_layers=dense_layers(self.args.num_layers,
                                      getattr(self.args, "first_k_dense_replace", 0),
                                      getattr(self.args, "moe_layer_freq", 1))
            if getattr(self.args, "num_experts", None) else (),
        )
        self.rules = split_rules(self.args)
        self._stage: Optional[int] = None
        self._files: Dict[Tuple[int, int], Dict[str, Any]] = {}

    def _path_guess(self) -> str:
        names = sorted(os.listdir(self.iter_dir)) if os.path.isdir(self.iter_dir) else []
        if not names:
            raise ConversionError(f"{self.iter_dir} holds no mp_rank_* directories")
        return os.path.join(self.iter_dir, names[0], MODEL_FILENAME)

    def _all_paths(self) -> List[str]:
        lay = self.layout
        return [self._path(t, p, e) for p in range(lay.pp) for t in range(lay.tp)
                for e in range(lay.ep)]

    def _path(self, tp_rank: int, stage: int, ep_rank: int) -> str:
        return os.path.join(self.iter_dir, self.layout.rank_dir(tp_rank, stage, ep_rank),
                            MODEL_FILENAME)

    def recorded_vocab_size(self) -> Optional[int]:
        """The unpadded vocabulary, where the checkpoint records it: from the HF config it
        came from, or the NullTokenizer size (else the padded size stands in for it)."""
        hf_config = getattr(self.args, "hf_config", None)
        if hf_config:
            return int(hf_config["vocab_size"])
        vocab = getattr(self.args, "vocab_size", None)
        return int(vocab) if vocab else None

    def _load_rank(self, tp_rank: int, stage: int, ep_rank: int) -> Dict[str, Any]:
        return _load(self._path(tp_rank, stage, ep_rank))

    def _chunk(self, stage: int, chunk: int, tp_rank: int, ep_rank: int = 0) -> Dict[str, Any]:
        if self._stage != stage:
            self._files = {}  # drop the previous stage's mappings first
            self._files = {(t, e): self._load_rank(t, stage, e)
                           for t in range(self.layout.tp) for e in range(self.layout.ep)}
            self._stage = stage
        state = self._files[(tp_rank, ep_rank)]
        key = self.layout.model_key(chunk)
        if key not in state:
            raise ConversionError(f"{self._path(tp_rank, stage, ep_rank)} has no {key!r} entry")
        return state[key]

    def _merged(self, stage: int, chunk: int, name: str, ep_rank: int = 0) -> List[torch.Tensor]:
        shards = [self._chunk(stage, chunk, t, ep_rank)[name] for t in range(self.layout.tp)]
        return merge(name, shards, self.rules)

    def _top_level(self, stage: int, chunk: int, prefix: str) -> Dict[str, List[torch.Tensor]]:
        """Every tensor under `prefix` (the embedding with its norm, the final norm)."""
        return {name: self._merged(stage, chunk, name)
                for name, value in self._chunk(stage, chunk, 0).items()
                if name.startswith(prefix) and value is not None}

    def read(self, group: Group) -> Dict[str, List[torch.Tensor]]:
        """Canonical tensors as row blocks viewing the rank files' tensors."""
        lay = self.layout
        if group.kind == "embedding":
            return self._top_level(0, 0, "embedding.")
        if group.kind == "final":
            stage, chunk = lay.pp - 1, len(lay.stages[-1]) - 1
            out = self._top_level(stage, chunk, FINAL_NORM.rsplit(".", 1)[0] + ".")
            if self.shape.reward:
                # The value head is replicated: tensor-parallel rank 0 holds all of it.
                out[OUTPUT] = [self._chunk(stage, chunk, 0)[OUTPUT]]
            elif not self.shape.tied:
                out[OUTPUT] = self._merged(stage, chunk, OUTPUT)
            return out
        stage, chunk, local = lay.locate(group.layer)
        prefix = f"decoder.layers.{local}."
        out: Dict[str, List[torch.Tensor]] = {}
        for ep_rank in range(lay.ep):
            for name, value in self._chunk(stage, chunk, 0, ep_rank).items():
                if not name.startswith(prefix) or value is None:
                    continue
                rel = name[len(prefix):]
                if "local_experts." in rel:
                    head, local_expert, rest = split_expert_name(rel)
                    expert = ep_rank * (self.shape.num_experts // lay.ep) + local_expert
                    canonical = f"decoder.layers.{group.layer}.{head}{expert}.{rest}"
                elif ep_rank == 0:
                    canonical = f"decoder.layers.{group.layer}.{rel}"
                else:
                    continue  # replicated on every expert rank
                out[canonical] = self._merged(stage, chunk, name, ep_rank)
        return out

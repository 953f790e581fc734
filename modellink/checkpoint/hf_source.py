"""Canonical groups read from a Hugging Face checkpoint directory, one group at a time."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import torch

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.mappings import Group, ModelShape, groups, hf_names, to_canonical
from modellink.checkpoint.reward import check_hf_config
from modellink.checkpoint.rules import AttentionShape
from modellink.checkpoint.torch_bin_io import open_checkpoint
from modellink.models.moe import dense_layers
from modellink.models.families import (
    canonical_config, check_config, get_family, get_model_family, head_dim, num_experts,
    query_groups, variant_for_config)


def read_config(directory: str) -> Dict[str, Any]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"--load-dir {directory} has no config.json")
    with open(path) as handle:
        return json.load(handle)


class HuggingFaceSource:
    def __init__(self, directory: str, family: str, dtype: Optional[torch.dtype],
                 reward: bool = False) -> None:
        """`reward`: a one-score sequence classifier (--orm), its head `score.weight`."""
        raw = read_config(directory)
        check_hf_config(directory, raw, reward)
        self.settings = variant_for_config(get_family(family), raw)
        check_config(self.settings, raw)
        self.config = canonical_config(self.settings, raw)
        self.mapping = get_model_family(family).mapping_for(self.settings)
        c = self.config
        self.shape = ModelShape(
            num_layers=c["num_hidden_layers"],
            attention=AttentionShape(c["num_attention_heads"], query_groups(c), head_dim(c)),
            num_experts=num_experts(self.settings, c),
            tied=bool(c.get("tie_word_embeddings", False)),
            vocab_size=c["vocab_size"],
            reward=reward,
            dense_layers=dense_layers(c["num_hidden_layers"], c.get("first_k_dense_replace", 0),
                                      c.get("moe_layer_freq", 1)) if self.settings.moe else (),
        )
        self.reader = open_checkpoint(directory)
        for group in groups(self.shape):
            for name in hf_names(self.mapping, self.shape, group):
                if name not in self.reader.entries:
                    raise ConversionError(f"{directory}: tensor {name} is missing from the "
                                          f"checkpoint (is --model-type-hf {family} right?)")
        self.source_dtype = self.reader.dtype(self.mapping.embedding)
        self.dtype = dtype or self.source_dtype

    def read(self, group: Group) -> Dict[str, List[torch.Tensor]]:
        """Row blocks viewing the files' pages; the maps close when the views are freed."""
        with self.reader.session() as read:
            blocks = to_canonical(self.mapping, self.shape, group, read)
        return {name: [b.to(self.dtype) for b in parts] for name, parts in blocks.items()}

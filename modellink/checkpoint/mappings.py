"""Weight mappings as data: HF parameter names <-> megatron-core GPTModel names.

A mapping lists the top-level names and the per-layer rules (per-expert rules for MoE, with
`{e}`); the code that applies them (`to_canonical` / `from_canonical`) is shared by all
families, and each family's mapping lives in its family file (modellink/models/families/).
Canonical names are megatron-core's with global layer and expert indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from modellink.checkpoint.blocks import concat, take_rows
from modellink.checkpoint.rules import AttentionShape, Rule, at

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
# Every transformers *ForSequenceClassification names its head so, beside the base model.
SCORE = "score.weight"
# A row normalised in its dtype has a norm within a few units of rounding of 1 (see unit_rows).
_UNIT_NORM_SLACK = 8


@dataclass(frozen=True)
class Buffer:
    """A tensor the HF checkpoint carries that no Megatron parameter holds: rebuilt on export
    (from the model shape, in the output dtype), ignored on import."""
    name: str
    make: Callable[["ModelShape", torch.dtype], torch.Tensor]


@dataclass(frozen=True)
class WeightMapping:
    layer: Tuple[Rule, ...]
    expert: Tuple[Rule, ...] = ()
    embedding: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    layer_prefix: str = "model.layers.{i}."
    # Baichuan2's NormHead: logits use the lm_head rows divided by their L2 norms.
    normalized_head: bool = False
    buffers: Tuple[Buffer, ...] = ()
    # Further tensors of the embedding and final groups (Bloom: the embedding norm, norm
    # biases), named from the model's root on both sides.
    embedding_extra: Tuple[Rule, ...] = ()
    final_extra: Tuple[Rule, ...] = ()
    # An MoE model's dense layers (ModelShape.dense_layers: DeepSeek's first layers).
    dense_layer: Tuple[Rule, ...] = ()


@dataclass(frozen=True)
class ModelShape:
    """What conversion needs to know about the model beyond names."""
    num_layers: int
    attention: AttentionShape
    num_experts: Optional[int]
    tied: bool
    vocab_size: int  # the real (HF) vocabulary; Megatron pads beyond it
    # A reward model: the output layer is the [1, hidden] value head, HF's `score.weight`.
    reward: bool = False
    # Layers of an MoE model with a dense MLP instead (mapped by WeightMapping.dense_layer).
    dense_layers: Tuple[int, ...] = ()


@dataclass(frozen=True)
class Group:
    """A unit of streaming: the embedding, one transformer layer, or the final norm + head."""
    kind: str  # "embedding" | "layer" | "final"
    layer: int = -1


def unit_rows(weight: torch.Tensor) -> torch.Tensor:
    """NormHead's lm_head as inference uses it, so that Megatron (which has no NormHead) gives
    the same logits: ModelLink normalises the rows once, on conversion. Export writes the rows
    as they are, so HF -> Megatron -> HF gives F.normalize(lm_head) back, bit for bit; a head
    already normalised (every row within rounding of unit norm) is kept unchanged, which makes
    that round trip exact for heads that come from Megatron."""
    norms = weight.float().norm(dim=1)
    if (norms - 1).abs().max() <= _UNIT_NORM_SLACK * torch.finfo(weight.dtype).eps:
        return weight
    return F.normalize(weight.float(), dim=1).to(weight.dtype)


def groups(shape: ModelShape) -> List[Group]:
    return [Group("embedding")] + [Group("layer", i) for i in range(shape.num_layers)] + \
        [Group("final")]


def _layer_rules(mapping: WeightMapping, shape: ModelShape, layer: int) -> List[Rule]:
    if layer in shape.dense_layers:
        return list(mapping.dense_layer)
    rules = list(mapping.layer)
    for e in range(shape.num_experts or 0):
        rules += [at(rule, e) for rule in mapping.expert]
    return rules


def _head(mapping: WeightMapping, shape: ModelShape) -> Optional[str]:
    if shape.reward:
        return SCORE
    return None if shape.tied else mapping.lm_head


def _extra(mapping: WeightMapping, group: Group) -> Tuple[Rule, ...]:
    return mapping.embedding_extra if group.kind == "embedding" else mapping.final_extra


def hf_names(mapping: WeightMapping, shape: ModelShape, group: Group) -> List[str]:
    """Every HF parameter a group is built from (to check a checkpoint before converting)."""
    extra = [name for rule in _extra(mapping, group) for name in rule.hf_names]
    if group.kind == "embedding":
        return [mapping.embedding] + extra
    if group.kind == "final":
        head = _head(mapping, shape)
        return [mapping.final_norm] + ([] if head is None else [head]) + extra
    prefix = mapping.layer_prefix.format(i=group.layer)
    return [prefix + name for rule in _layer_rules(mapping, shape, group.layer)
            for name in rule.hf_names]


def to_canonical(mapping: WeightMapping, shape: ModelShape, group: Group,
                 read: Callable[[str], torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    """Canonical tensors as row blocks (see rules.py)."""
    if group.kind != "layer":
        out = {rule.mg: rule.to_mg([read(name) for name in rule.hf_names], shape.attention)
               for rule in _extra(mapping, group)}
    if group.kind == "embedding":
        return {EMBEDDING: [read(mapping.embedding)], **out}
    if group.kind == "final":
        out[FINAL_NORM] = [read(mapping.final_norm)]
        if shape.reward:
            out[OUTPUT] = [read(SCORE)]
        elif not shape.tied:
            head = read(mapping.lm_head)
            out[OUTPUT] = [unit_rows(head) if mapping.normalized_head else head]
        return out
    prefix = mapping.layer_prefix.format(i=group.layer)
    out = {}
    for rule in _layer_rules(mapping, shape, group.layer):
        tensors = [read(prefix + name) for name in rule.hf_names]
        out[f"decoder.layers.{group.layer}.{rule.mg}"] = rule.to_mg(tensors, shape.attention)
    return out


def from_canonical(mapping: WeightMapping, shape: ModelShape, group: Group,
                   tensors: Dict[str, List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """HF tensors from canonical row blocks; rows beyond the real vocabulary are dropped."""
    if group.kind != "layer":
        out = {name: t for rule in _extra(mapping, group)
               for name, t in rule.to_hf(tensors[rule.mg], shape.attention).items()}
    if group.kind == "embedding":
        out[mapping.embedding] = concat(take_rows(tensors[EMBEDDING], 0, shape.vocab_size))
        return out
    if group.kind == "final":
        out[mapping.final_norm] = concat(tensors[FINAL_NORM])
        if shape.reward:
            out[SCORE] = concat(tensors[OUTPUT])
        elif not shape.tied:
            out[mapping.lm_head] = concat(take_rows(tensors[OUTPUT], 0, shape.vocab_size))
        return out
    prefix = mapping.layer_prefix.format(i=group.layer)
    out = {}
    for rule in _layer_rules(mapping, shape, group.layer):
        tensor = tensors[f"decoder.layers.{group.layer}.{rule.mg}"]
        out.update({prefix + name: t for name, t in rule.to_hf(tensor, shape.attention).items()})
    return out

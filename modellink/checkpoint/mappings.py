"""Family weight mappings as data: HF parameter names <-> megatron-core GPTModel names.

A mapping lists the top-level names and the per-layer rules (per-expert rules for MoE, with
`{e}`); the code that applies them (`to_canonical` / `from_canonical`) is shared by all
families. Canonical names are megatron-core's with global layer and expert indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from modellink.checkpoint.blocks import concat, take_rows
from modellink.checkpoint.rules import AttentionShape, Concat, Copy, FusedQKV, Rule, at

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"


@dataclass(frozen=True)
class WeightMapping:
    layer: Tuple[Rule, ...]
    expert: Tuple[Rule, ...] = ()
    embedding: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    layer_prefix: str = "model.layers.{i}."


@dataclass(frozen=True)
class ModelShape:
    """What conversion needs to know about the model beyond names."""
    num_layers: int
    attention: AttentionShape
    num_experts: Optional[int]
    tied: bool
    vocab_size: int  # the real (HF) vocabulary; Megatron pads beyond it


@dataclass(frozen=True)
class Group:
    """A unit of streaming: the embedding, one transformer layer, or the final norm + head."""
    kind: str  # "embedding" | "layer" | "final"
    layer: int = -1


_ATTENTION = (
    Copy("input_layernorm.weight", "input_layernorm.weight"),
    FusedQKV("self_attention.linear_qkv.weight", "self_attn.q_proj.weight",
             "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    Copy("self_attention.linear_proj.weight", "self_attn.o_proj.weight"),
    Copy("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
)
_QKV_BIAS = (FusedQKV("self_attention.linear_qkv.bias", "self_attn.q_proj.bias",
                      "self_attn.k_proj.bias", "self_attn.v_proj.bias"),)
_SWIGLU_MLP = (
    Concat("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    Copy("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
)
_LLAMA = WeightMapping(layer=_ATTENTION + _SWIGLU_MLP)

MAPPINGS: Dict[str, WeightMapping] = {
    "llama2": _LLAMA,
    "mistral": _LLAMA,
    "qwen": WeightMapping(layer=_ATTENTION + _QKV_BIAS + _SWIGLU_MLP),
    "mixtral": WeightMapping(
        layer=_ATTENTION + (Copy("mlp.router.weight", "block_sparse_moe.gate.weight"),),
        expert=(
            Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
                   ("block_sparse_moe.experts.{e}.w1.weight",
                    "block_sparse_moe.experts.{e}.w3.weight")),
            Copy("mlp.experts.local_experts.{e}.linear_fc2.weight",
                 "block_sparse_moe.experts.{e}.w2.weight"),
        ),
    ),
}


def groups(shape: ModelShape) -> List[Group]:
    return [Group("embedding")] + [Group("layer", i) for i in range(shape.num_layers)] + \
        [Group("final")]


def _layer_rules(mapping: WeightMapping, shape: ModelShape) -> List[Rule]:
    rules = list(mapping.layer)
    for e in range(shape.num_experts or 0):
        rules += [at(rule, e) for rule in mapping.expert]
    return rules


def hf_names(mapping: WeightMapping, shape: ModelShape, group: Group) -> List[str]:
    """Every HF parameter a group is built from (to check a checkpoint before converting)."""
    if group.kind == "embedding":
        return [mapping.embedding]
    if group.kind == "final":
        return [mapping.final_norm] + ([] if shape.tied else [mapping.lm_head])
    prefix = mapping.layer_prefix.format(i=group.layer)
    return [prefix + name for rule in _layer_rules(mapping, shape) for name in rule.hf_names]


def to_canonical(mapping: WeightMapping, shape: ModelShape, group: Group,
                 read: Callable[[str], torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
    """Canonical tensors as row blocks (see rules.py)."""
    if group.kind == "embedding":
        return {EMBEDDING: [read(mapping.embedding)]}
    if group.kind == "final":
        out = {FINAL_NORM: [read(mapping.final_norm)]}
        if not shape.tied:
            out[OUTPUT] = [read(mapping.lm_head)]
        return out
    prefix = mapping.layer_prefix.format(i=group.layer)
    out = {}
    for rule in _layer_rules(mapping, shape):
        tensors = [read(prefix + name) for name in rule.hf_names]
        out[f"decoder.layers.{group.layer}.{rule.mg}"] = rule.to_mg(tensors, shape.attention)
    return out


def from_canonical(mapping: WeightMapping, shape: ModelShape, group: Group,
                   tensors: Dict[str, List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """HF tensors from canonical row blocks; rows beyond the real vocabulary are dropped."""
    if group.kind == "embedding":
        return {mapping.embedding: concat(take_rows(tensors[EMBEDDING], 0, shape.vocab_size))}
    if group.kind == "final":
        out = {mapping.final_norm: concat(tensors[FINAL_NORM])}
        if not shape.tied:
            out[mapping.lm_head] = concat(take_rows(tensors[OUTPUT], 0, shape.vocab_size))
        return out
    prefix = mapping.layer_prefix.format(i=group.layer)
    out = {}
    for rule in _layer_rules(mapping, shape):
        tensor = tensors[f"decoder.layers.{group.layer}.{rule.mg}"]
        out.update({prefix + name: t for name, t in rule.to_hf(tensor, shape.attention).items()})
    return out

"""Family weight mappings as data: HF parameter names <-> megatron-core GPTModel names.

A mapping lists the top-level names and the per-layer rules (per-expert rules for MoE, with
`{e}`); the code that applies them (`to_canonical` / `from_canonical`) is shared by all
families. Canonical names are megatron-core's with global layer and expert indices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from modellink.checkpoint.blocks import concat, take_rows
from modellink.checkpoint.rules import (
    AttentionShape, Concat, Copy, FusedQKV, PackedQKV, Rule, at)

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
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
# Qwen3: RMSNorm over each head's queries and keys (one weight of head_dim, every head).
_QK_NORM = (Copy("self_attention.q_layernorm.weight", "self_attn.q_norm.weight"),
            Copy("self_attention.k_layernorm.weight", "self_attn.k_norm.weight"))
_SWIGLU_MLP = (
    Concat("mlp.linear_fc1.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight")),
    Copy("mlp.linear_fc2.weight", "mlp.down_proj.weight"),
)
_LLAMA = WeightMapping(layer=_ATTENTION + _SWIGLU_MLP)
# Gemma 2's four norms per layer: post_attention_layernorm follows attention there.
_GEMMA2 = WeightMapping(layer=(
    _ATTENTION[0], _ATTENTION[1], _ATTENTION[2],
    Copy("post_attn_norm.weight", "post_attention_layernorm.weight"),
    Copy("pre_mlp_layernorm.weight", "pre_feedforward_layernorm.weight"),
    Copy("post_mlp_layernorm.weight", "post_feedforward_layernorm.weight"),
) + _SWIGLU_MLP)


def _biased(mg: str, hf: str) -> Tuple[Copy, Copy]:
    return Copy(f"{mg}.weight", f"{hf}.weight"), Copy(f"{mg}.bias", f"{hf}.bias")


# Bloom's query_key_value is per head [q; k; v], megatron-core's layout without GQA.
_BLOOM = WeightMapping(
    layer=(_biased("input_layernorm", "input_layernorm")
           + _biased("self_attention.linear_qkv", "self_attention.query_key_value")
           + _biased("self_attention.linear_proj", "self_attention.dense")
           + _biased("pre_mlp_layernorm", "post_attention_layernorm")
           + _biased("mlp.linear_fc1", "mlp.dense_h_to_4h")
           + _biased("mlp.linear_fc2", "mlp.dense_4h_to_h")),
    embedding="transformer.word_embeddings.weight", final_norm="transformer.ln_f.weight",
    layer_prefix="transformer.h.{i}.",
    embedding_extra=_biased("embedding.word_embeddings_layernorm",
                            "transformer.word_embeddings_layernorm"),
    final_extra=(Copy("decoder.final_layernorm.bias", "transformer.ln_f.bias"),))


def _glm_inv_freq(shape: "ModelShape", dtype: torch.dtype) -> torch.Tensor:
    """ChatGLM's RotaryEmbedding.inv_freq, computed as its __init__ does (in the model dtype).
    Its forward recomputes the angles and reads only this buffer's dtype and device."""
    dim = shape.attention.head_dim // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


MAPPINGS: Dict[str, WeightMapping] = {
    "llama2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA2,
    "bloom": _BLOOM,
    "qwen": WeightMapping(layer=_ATTENTION + _QKV_BIAS + _SWIGLU_MLP),
    "qwen3": WeightMapping(layer=_ATTENTION + _QK_NORM + _SWIGLU_MLP),
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
    # One shared expert, its output scaled by sigmoid(shared_expert_gate . x).
    "qwen2_moe": WeightMapping(
        layer=_ATTENTION + _QKV_BIAS + (
            Copy("mlp.router.weight", "mlp.gate.weight"),
            Concat("mlp.shared_experts.linear_fc1.weight",
                   ("mlp.shared_expert.gate_proj.weight", "mlp.shared_expert.up_proj.weight")),
            Copy("mlp.shared_experts.linear_fc2.weight", "mlp.shared_expert.down_proj.weight"),
            Copy("mlp.shared_experts.gate_weight", "mlp.shared_expert_gate.weight"),
        ),
        expert=(
            Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
                   ("mlp.experts.{e}.gate_proj.weight", "mlp.experts.{e}.up_proj.weight")),
            Copy("mlp.experts.local_experts.{e}.linear_fc2.weight",
                 "mlp.experts.{e}.down_proj.weight"),
        ),
    ),
    "baichuan2": WeightMapping(
        layer=(_ATTENTION[0], PackedQKV("self_attention.linear_qkv.weight",
                                        "self_attn.W_pack.weight")) + _ATTENTION[2:] + _SWIGLU_MLP,
        normalized_head=True),
    # InternLM-1: LLaMA's names, with biases on q/k/v and o.
    "internlm": WeightMapping(
        layer=_ATTENTION + _QKV_BIAS
        + (Copy("self_attention.linear_proj.bias", "self_attn.o_proj.bias"),) + _SWIGLU_MLP),
    "internlm2": WeightMapping(
        layer=(
            Copy("input_layernorm.weight", "attention_norm.weight"),
            # InternLM2's wqkv already is megatron-core's layout: per KV group [q heads; k; v].
            Copy("self_attention.linear_qkv.weight", "attention.wqkv.weight"),
            Copy("self_attention.linear_proj.weight", "attention.wo.weight"),
            Copy("pre_mlp_layernorm.weight", "ffn_norm.weight"),
            Concat("mlp.linear_fc1.weight", ("feed_forward.w1.weight", "feed_forward.w3.weight")),
            Copy("mlp.linear_fc2.weight", "feed_forward.w2.weight"),
        ),
        embedding="model.tok_embeddings.weight", lm_head="output.weight"),
    "chatglm3": WeightMapping(
        layer=(
            Copy("input_layernorm.weight", "input_layernorm.weight"),
            PackedQKV("self_attention.linear_qkv.weight", "self_attention.query_key_value.weight"),
            PackedQKV("self_attention.linear_qkv.bias", "self_attention.query_key_value.bias"),
            Copy("self_attention.linear_proj.weight", "self_attention.dense.weight"),
            Copy("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
            Copy("mlp.linear_fc1.weight", "mlp.dense_h_to_4h.weight"),  # already [gate; up]
            Copy("mlp.linear_fc2.weight", "mlp.dense_4h_to_h.weight"),
        ),
        embedding="transformer.embedding.word_embeddings.weight",
        final_norm="transformer.encoder.final_layernorm.weight",
        lm_head="transformer.output_layer.weight", layer_prefix="transformer.encoder.layers.{i}.",
        buffers=(Buffer("transformer.rotary_pos_emb.inv_freq", _glm_inv_freq),)),
}


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


def _layer_rules(mapping: WeightMapping, shape: ModelShape) -> List[Rule]:
    rules = list(mapping.layer)
    for e in range(shape.num_experts or 0):
        rules += [at(rule, e) for rule in mapping.expert]
    return rules


def _extra(mapping: WeightMapping, group: Group) -> Tuple[Rule, ...]:
    return mapping.embedding_extra if group.kind == "embedding" else mapping.final_extra


def hf_names(mapping: WeightMapping, shape: ModelShape, group: Group) -> List[str]:
    """Every HF parameter a group is built from (to check a checkpoint before converting)."""
    extra = [name for rule in _extra(mapping, group) for name in rule.hf_names]
    if group.kind == "embedding":
        return [mapping.embedding] + extra
    if group.kind == "final":
        return [mapping.final_norm] + ([] if shape.tied else [mapping.lm_head]) + extra
    prefix = mapping.layer_prefix.format(i=group.layer)
    return [prefix + name for rule in _layer_rules(mapping, shape) for name in rule.hf_names]


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
        if not shape.tied:
            head = read(mapping.lm_head)
            out[OUTPUT] = [unit_rows(head) if mapping.normalized_head else head]
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
    if group.kind != "layer":
        out = {name: t for rule in _extra(mapping, group)
               for name, t in rule.to_hf(tensors[rule.mg], shape.attention).items()}
    if group.kind == "embedding":
        out[mapping.embedding] = concat(take_rows(tensors[EMBEDDING], 0, shape.vocab_size))
        return out
    if group.kind == "final":
        out[mapping.final_norm] = concat(tensors[FINAL_NORM])
        if not shape.tied:
            out[mapping.lm_head] = concat(take_rows(tensors[OUTPUT], 0, shape.vocab_size))
        return out
    prefix = mapping.layer_prefix.format(i=group.layer)
    out = {}
    for rule in _layer_rules(mapping, shape):
        tensor = tensors[f"decoder.layers.{group.layer}.{rule.mg}"]
        out.update({prefix + name: t for name, t in rule.to_hf(tensor, shape.attention).items()})
    return out

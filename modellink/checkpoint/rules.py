"""Tensor rules between Hugging Face parameters and one canonical megatron-core parameter.

A rule names the megatron-core parameter (relative to its layer) and the HF parameters it is
built from, and converts both ways without arithmetic, so a round trip is bit-identical.
Towards Megatron a rule returns row blocks (views, in order) rather than one concatenated
tensor, so each tensor-parallel shard is assembled with a single copy. Names may hold `{e}`
(expert index), filled in by `at()`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import torch

from modellink.checkpoint.blocks import concat, num_rows, take_rows


@dataclass(frozen=True)
class AttentionShape:
    heads: int
    groups: int  # key/value heads (query groups)
    head_dim: int


@dataclass(frozen=True)
class Copy:
    mg: str
    hf: str

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.hf,)

    def to_mg(self, tensors: Sequence[torch.Tensor], shape: AttentionShape) -> List[torch.Tensor]:
        return [tensors[0]]

    def to_hf(self, blocks: List[torch.Tensor], shape: AttentionShape) -> Dict[str, torch.Tensor]:
        return {self.hf: concat(blocks)}


@dataclass(frozen=True)
class Concat:
    """Row-wise concatenation, e.g. SwiGLU's fc1 = [gate; up]."""
    mg: str
    parts: Tuple[str, ...]

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return self.parts

    def to_mg(self, tensors: Sequence[torch.Tensor], shape: AttentionShape) -> List[torch.Tensor]:
        return list(tensors)

    def to_hf(self, blocks: List[torch.Tensor], shape: AttentionShape) -> Dict[str, torch.Tensor]:
        step = num_rows(blocks) // len(self.parts)
        return {name: concat(take_rows(blocks, i * step, (i + 1) * step))
                for i, name in enumerate(self.parts)}


@dataclass(frozen=True)
class FusedQKV:
    """Separate q, k, v -> megatron-core's layout: per query group [its q heads; k; v].

    Tensor parallelism then splits the fused tensor into contiguous blocks of whole groups.
    """
    mg: str
    q: str
    k: str
    v: str

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.q, self.k, self.v)

    def to_mg(self, tensors: Sequence[torch.Tensor], shape: AttentionShape) -> List[torch.Tensor]:
        return _grouped(*tensors, shape)

    def to_hf(self, blocks: List[torch.Tensor], shape: AttentionShape) -> Dict[str, torch.Tensor]:
        q, k, v = _ungrouped(blocks, shape)
        return {self.q: concat(q), self.k: concat(k), self.v: concat(v)}


@dataclass(frozen=True)
class PackedQKV:
    """One HF tensor of rows [all q; all k; all v] (Baichuan's W_pack, ChatGLM's
    query_key_value, weight or bias) <-> megatron-core's per-group layout."""
    mg: str
    hf: str

    @property
    def hf_names(self) -> Tuple[str, ...]:
        return (self.hf,)

    def to_mg(self, tensors: Sequence[torch.Tensor], shape: AttentionShape) -> List[torch.Tensor]:
        packed = tensors[0]
        q_rows, kv_rows = shape.heads * shape.head_dim, shape.groups * shape.head_dim
        return _grouped(packed[:q_rows], packed[q_rows:q_rows + kv_rows],
                        packed[q_rows + kv_rows:], shape)

    def to_hf(self, blocks: List[torch.Tensor], shape: AttentionShape) -> Dict[str, torch.Tensor]:
        q, k, v = _ungrouped(blocks, shape)
        return {self.hf: concat(q + k + v)}


def _grouped(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             shape: AttentionShape) -> List[torch.Tensor]:
    g, d = shape.groups, shape.head_dim
    q_rows = q.shape[0] // g
    blocks = []
    for group in range(g):
        blocks += [q[group * q_rows:(group + 1) * q_rows], k[group * d:(group + 1) * d],
                   v[group * d:(group + 1) * d]]
    return blocks


def _ungrouped(blocks: List[torch.Tensor], shape: AttentionShape
               ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
    """The q, k and v row blocks of megatron-core's per-group layout."""
    d = shape.head_dim
    q_rows = shape.heads // shape.groups * d
    q, k, v = [], [], []
    for group in range(shape.groups):
        base = group * (q_rows + 2 * d)
        q += take_rows(blocks, base, base + q_rows)
        k += take_rows(blocks, base + q_rows, base + q_rows + d)
        v += take_rows(blocks, base + q_rows + d, base + q_rows + 2 * d)
    return q, k, v


Rule = Union[Copy, Concat, FusedQKV, PackedQKV]


def at(rule: Rule, expert: int) -> Rule:
    """The rule with `{e}` in its names replaced by one expert index."""
    changes = {}
    for f in dataclasses.fields(rule):
        value = getattr(rule, f.name)
        if isinstance(value, tuple):
            changes[f.name] = tuple(v.format(e=expert) for v in value)
        else:
            changes[f.name] = value.format(e=expert)
    return dataclasses.replace(rule, **changes)

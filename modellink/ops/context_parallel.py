"""Context parallelism (`--context-parallel-size` > 1) on modellink's attention operators:
megatron-core's own needs Transformer Engine's attention, which we do not use.

Layout: the sequence of S tokens is cut into 2*CP equal chunks and CP rank r holds chunks r and
2*CP-1-r, so every rank does the same causal attention work (megatron-core's RoPE slices its
position embeddings the same way). The attention mask stays global ([b|1, 1, S, S], True =
masked out) and the same on every rank; attention indexes it by global position.

`ContextParallelAttention` is the core attention of a layer under CP:
- ulysses_cp_algo: all-to-all to whole rows for heads/CP heads (ulysses_attention.py), then
  this layer's ordinary attention path (reference, SDPA, flash-attn or npu_fusion_attention),
  which sees the whole sequence in order;
- megatron_cp_algo: ring attention over the CP group (ring_attention.py);
- hybrid_cp_algo: Ulysses inside groups of `--ulysses-degree-in-cp` consecutive CP ranks
  (megatron-core's hierarchical CP level 1), ring attention across them (level 2).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import get_pg_rank, get_pg_size

from modellink.argument_errors import ArgumentError
from modellink.ops.attention import AttentionSettings, FlashSelfAttention, refuse_bias_and_thd
from modellink.ops.ring_attention import ring_attention
from modellink.ops.ulysses_attention import kv_repeat_factor, ulysses_attention

ALGORITHMS = ("ulysses_cp_algo", "megatron_cp_algo", "hybrid_cp_algo")


@dataclass(frozen=True)
class ContextParallelSettings:
    algo: str
    ulysses_degree: int = 1  # --ulysses-degree-in-cp (hybrid_cp_algo)
    send_recv_overlap: bool = False  # --use-cp-send-recv-overlap
    kv_head_repeat: bool = False  # --kv-head-repeat-before-uly-alltoall

    def __post_init__(self) -> None:
        if self.algo not in ALGORITHMS:
            raise ArgumentError(f"--context-parallel-algo {self.algo!r} is not one of "
                                f"{', '.join(ALGORITHMS)}")


def local_positions(seq_local: int, rank: int, size: int, device: torch.device) -> torch.Tensor:
    """int64 [seq_local]: the global positions of CP rank `rank`'s rows (chunks rank and
    2*size-1-rank of the sequence)."""
    if seq_local % 2:
        raise ArgumentError(f"--context-parallel-size {size}: a rank's {seq_local} rows do not "
                            f"split into its two equal chunks")
    chunk = seq_local // 2
    offsets = torch.arange(chunk, device=device)
    return torch.cat([offsets + rank * chunk, offsets + (2 * size - 1 - rank) * chunk])


def slice_for_rank(tensor: torch.Tensor, dim: int, rank: int, size: int) -> torch.Tensor:
    """CP rank `rank`'s two chunks of the full-length `tensor` along `dim`."""
    length = tensor.shape[dim]
    if length % (2 * size):
        raise ArgumentError(f"--context-parallel-size {size}: the sequence length {length} does "
                            f"not divide into 2 x {size} equal chunks (--seq-length)")
    chunks = tensor.chunk(2 * size, dim=dim)
    return torch.cat([chunks[rank], chunks[2 * size - 1 - rank]], dim=dim)


class ContextParallelAttention(FlashSelfAttention):
    """FlashSelfAttention over this rank's CP rows; `cp` comes from the layer spec."""

    def __init__(self, config: TransformerConfig, layer_number: int,
                 attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection: object = None,
                 settings: AttentionSettings = AttentionSettings(), *,
                 cp: ContextParallelSettings) -> None:
        super().__init__(config, layer_number, attn_mask_type, attention_type,
                         attention_dropout=attention_dropout, softmax_scale=softmax_scale,
                         cp_comm_type=cp_comm_type, pg_collection=pg_collection,
                         settings=settings)
        self.cp = cp
        if pg_collection is not None:
            self._cp_group, tp_group = pg_collection.cp, pg_collection.tp
        else:
            self._cp_group = parallel_state.get_context_parallel_group()
            tp_group = parallel_state.get_tensor_model_parallel_group()
        self._ulysses_group: Optional[dist.ProcessGroup] = None
        self._ring_group: Optional[dist.ProcessGroup] = None
        if cp.algo == "ulysses_cp_algo":
            self._ulysses_group = self._cp_group
        elif cp.algo == "megatron_cp_algo":
            self._ring_group = self._cp_group
        else:
            self._ulysses_group, self._ring_group = (
                parallel_state.get_hierarchical_context_parallel_groups())
            inner_size = get_pg_size(self._ulysses_group)
            if inner_size != cp.ulysses_degree:
                raise ValueError(f"the hierarchical CP groups are {inner_size} x "
                                 f"{get_pg_size(self._ring_group)} ranks, --ulysses-degree-in-cp "
                                 f"is {cp.ulysses_degree}: initialize_model_parallel needs "
                                 f"hierarchical_context_parallel_sizes=[U, CP // U]")
        if self._ring_group is not None:
            self._refuse_under_ring()
        if self._ulysses_group is not None:
            self._check_ulysses(config, get_pg_size(tp_group))

    def _refuse_under_ring(self) -> None:
        refused = [("--position-embedding-type alibi", self.settings.alibi),
                   ("--attn-logit-softcapping", self.settings.softcap is not None),
                   ("--attention-dropout above 0", self.dropout_p > 0)]
        for flag, present in refused:
            if present:
                raise ArgumentError(f"{flag} is not supported with --context-parallel-algo "
                                    f"{self.cp.algo} (ring attention); use ulysses_cp_algo")

    def _check_ulysses(self, config: TransformerConfig, tp_size: int) -> None:
        degree = get_pg_size(self._ulysses_group)
        kv_repeat_factor(config.num_attention_heads // tp_size, config.num_query_groups // tp_size,
                         degree, self.cp.kv_head_repeat)
        if self._alibi_slopes is not None:
            # After the all-to-all this rank attends with the Ulysses rank's block of the heads.
            rank = get_pg_rank(self._ulysses_group)
            self._alibi_slopes = self._alibi_slopes.view(degree, -1)[rank]

    def _ring(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              positions: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return ring_attention(query, key, value, positions, self._ring_group,
                              scale=self.softmax_scale, window=self.window,
                              attention_mask=attention_mask, overlap=self.cp.send_recv_overlap)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor],
                attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None,
                packed_seq_params: Optional[PackedSeqParams] = None) -> torch.Tensor:
        refuse_bias_and_thd(attention_bias, packed_seq_params)
        positions = local_positions(query.shape[0], get_pg_rank(self._cp_group),
                                    get_pg_size(self._cp_group), query.device)
        if self._ulysses_group is None:
            return self._ring(query, key, value, positions, attention_mask)
        if self._ring_group is None:
            # The group's rows sorted are the whole sequence in order: the ordinary path.
            def inner(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      _positions: torch.Tensor) -> torch.Tensor:
                return super(ContextParallelAttention, self).forward(q, k, v, attention_mask,
                                                                     attn_mask_type)
        else:
            def inner(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      sorted_positions: torch.Tensor) -> torch.Tensor:
                return self._ring(q, k, v, sorted_positions, attention_mask)
        return ulysses_attention(query, key, value, positions, self._ulysses_group, inner,
                                 kv_head_repeat=self.cp.kv_head_repeat)

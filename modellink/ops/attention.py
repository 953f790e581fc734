"""Core attention for `--use-flash-attn` and `--sliding-window`: a drop-in for megatron-core's
DotProductAttention (same constructor and forward) with fused kernels per device.

Paths: npu -> torch_npu.npu_fusion_attention (attention_npu.py); cuda -> the flash-attn package's
flash_attn_func when installed (fp16/bf16 batches without an explicit mask), else torch SDPA
(FlashAttention / memory-efficient kernels); cpu -> torch SDPA; reference -> plain math, which is
also what `--sliding-window` runs without `--use-flash-attn`.

Every path computes the same function: query i attends key j iff j <= i, i - j <= W when a
window W is set (`--sliding-window`, or `--pre-tockens` in sparse modes 0 and 4;
TransformerConfig's window_size = (W, 0)), and the batch's attention mask allows it
(megatron-core's convention: True = masked out), which is how packed samples are kept from
attending across each other. With fewer queries than keys (a KV-cache step) the queries are the
last positions. K/V keep their num_query_groups heads (GQA) on every path.

Per layer, the window applies where megatron-core's `window_attn_skip_freq` says
(`--interleave-sliding-window`: odd layers, as Gemma 2). Two score modifiers run on the reference
path (and ALiBi also on SDPA, as a float mask): `--attn-logit-softcapping` c maps scores s to
c * tanh(s / c) before masking (Gemma 2), and ALiBi (alibi.py) adds its bias (Bloom).
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention

from modellink.argument_errors import ArgumentError
from modellink.ops.alibi import alibi_bias, alibi_slopes
from modellink.ops.attention_npu import mask_arguments, npu_fusion_attention

PATH_NAMES = {
    "npu": "npu_fusion_attention",
    "flash-attn": "flash-attn flash_attn_func (SDPA for fp32 or masked batches)",
    "sdpa": "torch SDPA",
    "reference": "reference math",
}
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class AttentionSettings:
    path: str = "reference"
    sparse_mode: int = 0  # npu_fusion_attention's mask mode (0-4)
    pre_tokens: int = 65536
    next_tokens: int = 0
    shape_order: str = "SBH"  # the layout handed to npu_fusion_attention
    softcap: Optional[float] = None  # --attn-logit-softcapping
    alibi: bool = False  # --position-embedding-type alibi


def select_attention_path(device: str, use_flash_attn: bool) -> str:
    if not use_flash_attn:
        return "reference"
    if device == "npu":
        return "npu"
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash-attn"
    return "sdpa"


def attention_window(sliding_window: Optional[int], sparse_mode: int, pre_tokens: int,
                     seq_length: int) -> Optional[int]:
    """How far back (beyond itself) a query sees, or None when the window covers the sequence."""
    window = sliding_window
    if window is None and sparse_mode in (0, 4):
        window = pre_tokens  # npu_fusion_attention's band in these modes
    return window if window is not None and window < seq_length - 1 else None


def visible_mask(sq: int, skv: int, window: Optional[int], attention_mask: Optional[torch.Tensor],
                 device: torch.device) -> Optional[torch.Tensor]:
    """Bool [.., sq, skv], True where the query may attend; None for causal attention with the
    queries as the last sq positions and no other limit (equal lengths, or a one-token decode
    step, which sees every cached key)."""
    if window is None and attention_mask is None and (sq == skv or sq == 1):
        return None
    rows = torch.arange(sq, device=device)[:, None] + (skv - sq)
    cols = torch.arange(skv, device=device)[None, :]
    visible = cols <= rows
    if window is not None:
        visible = visible & (rows - cols <= window)
    if attention_mask is not None:
        visible = visible & ~attention_mask.bool()
    return visible


def reference_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        visible: Optional[torch.Tensor], scale: float, dropout_p: float,
                        softcap: Optional[float] = None, bias: Optional[torch.Tensor] = None
                        ) -> torch.Tensor:
    """Plain math. Query heads of one group are stacked along the rows ([b, g, r*sq, d]) so
    the group's single K/V head serves them all without being repeated. `bias`: float32
    [heads, sq, skv] added to the (soft-capped) scores."""
    sq, b, heads, dim = query.shape
    skv, groups = key.shape[0], key.shape[2]
    rep = heads // groups
    q = query.permute(1, 2, 0, 3).reshape(b, groups, rep * sq, dim)
    k, v = (t.permute(1, 2, 0, 3) for t in (key, value))  # [b, g, skv, d]
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if visible is None:
        visible = torch.ones(sq, skv, dtype=torch.bool, device=query.device).tril(skv - sq)
    scores = scores.view(b, groups, rep, sq, skv)
    if bias is not None:
        scores = scores + bias.view(groups, rep, sq, skv)
    scores = scores.masked_fill(~visible.unsqueeze(-3), -math.inf)
    probs = torch.softmax(scores, dim=-1).to(query.dtype).view(b, groups, rep * sq, skv)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    out = torch.matmul(probs, v).view(b, heads, sq, dim)
    return out.permute(2, 0, 1, 3).reshape(sq, b, heads * dim)


def sdpa_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   visible: Optional[torch.Tensor], scale: float, dropout_p: float,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    sq, b, skv = query.shape[0], query.shape[1], key.shape[0]
    q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
    mask = visible
    if bias is not None:  # a float mask: the bias where visible, -inf elsewhere
        if visible is None:
            visible = torch.ones(sq, skv, dtype=torch.bool, device=query.device).tril(skv - sq)
        mask = torch.where(visible, bias, -math.inf).to(q.dtype)
    out = F.scaled_dot_product_attention(
        # torch's is_causal aligns the queries with the first keys: wrong for sq < skv.
        q, k, v, attn_mask=mask, is_causal=mask is None and sq > 1, dropout_p=dropout_p,
        scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.permute(2, 0, 1, 3).reshape(sq, b, -1)


def flash_attn_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         window: Optional[int], scale: float, dropout_p: float) -> torch.Tensor:
    from flash_attn import flash_attn_func

    sq, b = query.shape[0], query.shape[1]
    out = flash_attn_func(
        query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1), dropout_p=dropout_p,
        softmax_scale=scale, causal=True,
        window_size=(window, 0) if window is not None else (-1, -1))
    return out.transpose(0, 1).reshape(sq, b, -1)


def refuse_bias_and_thd(attention_bias: Optional[torch.Tensor],
                        packed_seq_params: Optional[PackedSeqParams]) -> None:
    """megatron-core's core-attention inputs our attention does not take."""
    if attention_bias is not None:
        raise ValueError("modellink attention does not take an attention bias")
    if packed_seq_params is not None:
        raise ValueError("packed THD sequences are not supported: packed samples reach "
                         "attention as a per-batch mask (--reset-attention-mask)")


class FlashSelfAttention(MegatronModule):
    """Drop-in for megatron-core's DotProductAttention; `settings` comes from the layer spec."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection: object = None,
                 settings: AttentionSettings = AttentionSettings()) -> None:
        super().__init__(config=config)
        if attn_mask_type not in (AttnMaskType.causal, AttnMaskType.padding_causal):
            raise ValueError(f"modellink attention supports causal attention only, "
                             f"got {attn_mask_type}")
        self.settings = settings
        self.dropout_p = (config.attention_dropout if attention_dropout is None
                          else attention_dropout)
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        windowed = is_layer_window_attention(config.window_size, config.window_attn_skip_freq,
                                             layer_number)
        self.window = config.window_size[0] if windowed else None
        self._npu_masks: Dict[tuple, torch.Tensor] = {}
        self._alibi_slopes = self._local_alibi_slopes(pg_collection) if settings.alibi else None
        if settings.path == "npu" and settings.alibi:
            raise ArgumentError("--position-embedding-type alibi is not supported with "
                             "--use-flash-attn on npu (npu_fusion_attention path); drop it")

    def _local_alibi_slopes(self, pg_collection: object) -> torch.Tensor:
        """The slopes of this tensor-parallel rank's heads (heads split in contiguous blocks)."""
        if pg_collection is not None:
            tp_rank, tp_size = pg_collection.tp.rank(), pg_collection.tp.size()
        else:
            tp_rank = parallel_state.get_tensor_model_parallel_rank()
            tp_size = parallel_state.get_tensor_model_parallel_world_size()
        local = self.config.num_attention_heads // tp_size
        return alibi_slopes(self.config.num_attention_heads)[tp_rank * local:(tp_rank + 1) * local]

    def _dropout_rng(self) -> contextlib.AbstractContextManager:
        # As megatron-core: heads differ across tensor-parallel ranks, so their dropout draws
        # from the model-parallel stream (sequence parallelism draws from the default one).
        if self.training and self.dropout_p > 0 and not self.config.sequence_parallel:
            return tensor_parallel.get_cuda_rng_tracker().fork()
        return contextlib.nullcontext()

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor],
                attn_mask_type: Optional[AttnMaskType] = None,
                attention_bias: Optional[torch.Tensor] = None,
                packed_seq_params: Optional[PackedSeqParams] = None) -> torch.Tensor:
        refuse_bias_and_thd(attention_bias, packed_seq_params)
        dropout_p = self.dropout_p if self.training else 0.0
        path, sq, skv = self.settings.path, query.shape[0], key.shape[0]
        with self._dropout_rng():
            if path == "npu":
                mask_args = mask_arguments(
                    self.settings.sparse_mode, self.settings.pre_tokens,
                    self.settings.next_tokens, self.window, sq, skv, attention_mask,
                    query.device, self._npu_masks)
                return npu_fusion_attention(query, key, value, layout=self.settings.shape_order,
                                            scale=self.softmax_scale, keep_prob=1.0 - dropout_p,
                                            mask_args=mask_args)
            bias = (None if self._alibi_slopes is None
                    else alibi_bias(self._alibi_slopes, sq, skv, query.device))
            if (path == "flash-attn" and attention_mask is None and query.dtype in _HALF
                    and bias is None):
                return flash_attn_attention(query, key, value, self.window, self.softmax_scale,
                                            dropout_p)
            visible = visible_mask(sq, skv, self.window, attention_mask, query.device)
            if path == "reference":
                return reference_attention(query, key, value, visible, self.softmax_scale,
                                           dropout_p, self.settings.softcap, bias)
            return sdpa_attention(query, key, value, visible, self.softmax_scale, dropout_p, bias)

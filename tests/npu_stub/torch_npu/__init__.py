"""A stand-in `torch_npu` for testing modellink's NPU dispatch on CPU.

Each function takes the arguments torch_npu's API reference documents, asserts the shapes, dtypes
and layouts that reference allows, and computes the same math with plain torch ops (so autograd
gives the gradients the real kernels' backward computes). `calls` records every call, so tests
can check what was handed over. The MC2 ops reach their process group through `register_group`.
Nothing here ran on Ascend hardware.
"""
from __future__ import annotations

import math
import types
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

calls: List[Tuple[str, dict]] = []
_groups: Dict[str, dist.ProcessGroup] = {}
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)
_HALF = (torch.float16, torch.bfloat16)
_SOFTMAX_STAT_WIDTH = 8  # npu_fusion_attention's softmax_max / softmax_sum: [B, N, S, 8]


def _record(name: str, **info: object) -> None:
    calls.append((name, info))


def register_group(name: str, group: dist.ProcessGroup) -> None:
    _groups[name] = group


def npu_rms_norm(self: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-06
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    assert self.dtype in _FLOATS and gamma.dtype == self.dtype, (self.dtype, gamma.dtype)
    assert 1 <= self.dim() <= 8
    assert tuple(gamma.shape) == tuple(self.shape[self.dim() - gamma.dim():]), (gamma.shape,)
    _record("npu_rms_norm", shape=tuple(self.shape), dtype=self.dtype, epsilon=epsilon)
    x32 = self.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + epsilon)
    return (gamma * (x32 * rstd).to(self.dtype)), rstd


def npu_swiglu(input: torch.Tensor, dim: int = -1) -> torch.Tensor:
    assert input.dtype in _FLOATS and input.is_contiguous()
    assert -input.dim() <= dim < input.dim() and input.shape[dim] % 2 == 0
    _record("npu_swiglu", shape=tuple(input.shape), dtype=input.dtype, dim=dim)
    a, b = torch.chunk(input, 2, dim=dim)
    return torch.nn.functional.silu(a) * b


def npu_rotary_mul(input: torch.Tensor, r1: torch.Tensor, r2: torch.Tensor,
                   rotary_mode: str = "half") -> torch.Tensor:
    assert rotary_mode == "half"
    assert input.dim() == r1.dim() == r2.dim() == 4, "x, r1, r2 must be 4-D"
    assert input.dtype in _FLOATS and r1.dtype == r2.dtype == input.dtype
    s, b, n, d = input.shape  # SBND is the layout modellink passes
    assert d % 2 == 0 and d < 896 and b <= 1000 and n <= 1000
    assert r1.shape == r2.shape and r1.shape in ((s, 1, 1, d), (s, b, 1, d), (s, b, n, d)), \
        f"r1/r2 {tuple(r1.shape)} do not fit an SBND input {tuple(input.shape)}"
    _record("npu_rotary_mul", shape=tuple(input.shape), r_shape=tuple(r1.shape))
    x1, x2 = torch.chunk(input, 2, -1)
    return r1 * input + r2 * torch.cat((-x2, x1), dim=-1)


def _to_bnsd(t: torch.Tensor, heads: int, layout: str) -> torch.Tensor:
    if layout == "BNSD":
        assert t.dim() == 4 and t.shape[1] == heads
        return t
    if layout == "BSND":
        assert t.dim() == 4 and t.shape[2] == heads
        return t.transpose(1, 2)
    assert t.dim() == 3 and t.shape[-1] % heads == 0, f"{layout} wants [., ., H]"
    if layout == "BSH":
        b, s, h = t.shape
        return t.reshape(b, s, heads, h // heads).transpose(1, 2)
    s, b, h = t.shape  # SBH
    return t.reshape(s, b, heads, h // heads).permute(1, 2, 0, 3)


def _from_bnsd(t: torch.Tensor, layout: str) -> torch.Tensor:
    b, n, s, d = t.shape
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        return t.transpose(1, 2).reshape(b, s, n * d)
    return t.permute(2, 0, 1, 3).reshape(s, b, n * d)


def _masked(sparse_mode: int, atten_mask: Optional[torch.Tensor], sq: int, skv: int,
            pre: int, nxt: int) -> torch.Tensor:
    """True where masked out, following the documented sparse modes."""
    ones = torch.ones(sq, skv, dtype=torch.bool)
    band = ones.triu(nxt + 1) | ones.tril(-pre - 1)
    if sparse_mode in (2, 3, 4):
        assert atten_mask is not None and atten_mask.shape == (2048, 2048), \
            "modes 2-4 take the compressed 2048 x 2048 mask"
        assert torch.equal(atten_mask.cpu(), torch.ones(2048, 2048, dtype=torch.bool).triu(1))
        if sparse_mode == 2:
            return ones.triu(1)
        if sparse_mode == 3:
            return ones.triu(skv - sq + 1)
        return band
    if atten_mask is None:
        return torch.zeros(sq, skv, dtype=torch.bool)  # mode 0 without a mask: no masking
    assert atten_mask.shape[-2:] == (sq, skv) and atten_mask.dim() in (2, 4)
    return atten_mask.cpu() | band if sparse_mode == 0 else atten_mask.cpu()


def npu_fusion_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         head_num: int, input_layout: str, pse: Optional[torch.Tensor] = None,
                         padding_mask: Optional[torch.Tensor] = None,
                         atten_mask: Optional[torch.Tensor] = None, scale: float = 1.0,
                         keep_prob: float = 1.0, pre_tockens: int = 2147483647,
                         next_tockens: int = 2147483647, inner_precise: int = 0,
                         prefix: Optional[List[int]] = None,
                         actual_seq_qlen: Optional[List[int]] = None,
                         actual_seq_kvlen: Optional[List[int]] = None, sparse_mode: int = 0,
                         gen_mask_parallel: bool = True, sync: bool = False) -> tuple:
    assert input_layout in ("SBH", "BSH", "BSND", "BNSD"), input_layout
    assert query.dtype in _FLOATS and key.dtype == value.dtype == query.dtype
    assert pse is None and padding_mask is None and prefix is None
    assert actual_seq_qlen is None and actual_seq_kvlen is None
    assert keep_prob == 1.0, "the stand-in cannot reproduce the kernel's dropout stream"
    assert sparse_mode in (0, 1, 2, 3, 4) and inner_precise in (0, 1)
    assert atten_mask is None or atten_mask.dtype == torch.bool
    q = _to_bnsd(query, head_num, input_layout)
    heads_kv = (key.shape[-1] // q.shape[-1] if input_layout in ("SBH", "BSH")
                else key.shape[1 if input_layout == "BNSD" else 2])
    k, v = (_to_bnsd(t, heads_kv, input_layout) for t in (key, value))
    assert head_num % heads_kv == 0, "key/value heads must divide the query heads"
    assert q.shape[-1] % 16 == 0 and q.shape[-1] <= 512, "head dim: multiple of 16, at most 512"
    _record("npu_fusion_attention", layout=input_layout, query=tuple(query.shape),
            key=tuple(key.shape), head_num=head_num, sparse_mode=sparse_mode,
            pre_tockens=pre_tockens, next_tockens=next_tockens,
            mask=None if atten_mask is None else tuple(atten_mask.shape))
    rep = head_num // heads_kv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = _masked_scores(q, k, scale, sparse_mode, atten_mask, pre_tockens, next_tockens)
    probs = torch.softmax(scores, dim=-1)
    out = _from_bnsd(torch.matmul(probs.to(q.dtype), v), input_layout)
    # softmax_max / softmax_sum: float32 [B, N, Sq, 8], each row's value repeated 8 times;
    # softmax_out is reserved (empty).
    softmax_max = scores.amax(-1, keepdim=True)
    softmax_sum = torch.exp(scores - softmax_max).sum(-1, keepdim=True)
    width = (-1,) * 3 + (_SOFTMAX_STAT_WIDTH,)
    return (out, softmax_max.expand(width).contiguous(), softmax_sum.expand(width).contiguous(),
            torch.empty(0), 0, 0, 0)


def _masked_scores(q: torch.Tensor, k: torch.Tensor, scale: float, sparse_mode: int,
                   atten_mask: Optional[torch.Tensor], pre: int, nxt: int) -> torch.Tensor:
    """Scaled float32 scores of BNSD q and (repeated) k, -inf where the mask hides the key."""
    masked = _masked(sparse_mode, atten_mask, q.shape[2], k.shape[2], pre, nxt).to(q.device)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    return scores.masked_fill(masked, -math.inf)


def npu_fusion_attention_grad(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              dy: torch.Tensor, head_num: int, input_layout: str, *,
                              pse: Optional[torch.Tensor] = None,
                              padding_mask: Optional[torch.Tensor] = None,
                              atten_mask: Optional[torch.Tensor] = None,
                              softmax_max: Optional[torch.Tensor] = None,
                              softmax_sum: Optional[torch.Tensor] = None,
                              softmax_in: Optional[torch.Tensor] = None,
                              attention_in: Optional[torch.Tensor] = None,
                              scale_value: float = 1.0, keep_prob: float = 1.0,
                              pre_tockens: int = 2147483647, next_tockens: int = 2147483647,
                              inner_precise: int = 0, seed: int = 0, offset: int = 0,
                              numels: int = 0, prefix: Optional[List[int]] = None,
                              actual_seq_qlen: Optional[List[int]] = None,
                              actual_seq_kvlen: Optional[List[int]] = None, sparse_mode: int = 0,
                              gen_mask_parallel: bool = True, sync: bool = False) -> tuple:
    """(dq, dk, dv, dpse) of npu_fusion_attention, from the forward's softmax statistics and
    output: P = exp(S - softmax_max) / softmax_sum, dS = P * (dy V^T - rowsum(dy * out))."""
    assert input_layout in ("SBH", "BSH", "BSND", "BNSD"), input_layout
    assert query.dtype in _FLOATS and key.dtype == value.dtype == query.dtype
    assert pse is None and padding_mask is None and prefix is None and softmax_in is None
    assert actual_seq_qlen is None and actual_seq_kvlen is None
    assert keep_prob == 1.0 and (seed, offset, numels) == (0, 0, 0), "no dropout stream here"
    assert sparse_mode in (0, 1, 2, 3, 4) and inner_precise in (0, 1)
    assert atten_mask is None or atten_mask.dtype == torch.bool
    assert attention_in is not None and softmax_max is not None and softmax_sum is not None
    assert dy.dtype == attention_in.dtype == query.dtype
    assert dy.shape == attention_in.shape == query.shape, (dy.shape, attention_in.shape)
    q, d_out, out = (_to_bnsd(t, head_num, input_layout) for t in (query, dy, attention_in))
    heads_kv = (key.shape[-1] // q.shape[-1] if input_layout in ("SBH", "BSH")
                else key.shape[1 if input_layout == "BNSD" else 2])
    k, v = (_to_bnsd(t, heads_kv, input_layout) for t in (key, value))
    assert head_num % heads_kv == 0 and q.shape[-1] % 16 == 0 and q.shape[-1] <= 512
    b, n, sq, dim = q.shape
    for stat in (softmax_max, softmax_sum):
        assert stat.dtype == torch.float32 and stat.shape == (b, n, sq, _SOFTMAX_STAT_WIDTH)
        assert torch.equal(stat, stat[..., :1].expand_as(stat)), "one value repeated per row"
    _record("npu_fusion_attention_grad", layout=input_layout, query=tuple(query.shape),
            key=tuple(key.shape), head_num=head_num, sparse_mode=sparse_mode,
            mask=None if atten_mask is None else tuple(atten_mask.shape))
    rep = head_num // heads_kv
    k32, v32 = (t.float().repeat_interleave(rep, dim=1) for t in (k, v))
    scores = _masked_scores(q.float(), k32, scale_value, sparse_mode, atten_mask, pre_tockens,
                            next_tockens)
    probs = torch.exp(scores - softmax_max[..., :1]) / softmax_sum[..., :1]
    d_out, out = d_out.float(), out.float()
    d_scores = probs * (d_out @ v32.transpose(-1, -2) - (d_out * out).sum(-1, keepdim=True))
    grad_q = d_scores @ k32 * scale_value
    grad_k = d_scores.transpose(-1, -2) @ q.float() * scale_value
    grad_v = probs.transpose(-1, -2) @ d_out

    def per_group(grad: torch.Tensor) -> torch.Tensor:
        return grad.view(b, heads_kv, rep, *grad.shape[2:]).sum(2)

    grads = (grad_q, per_group(grad_k), per_group(grad_v))
    return tuple(_from_bnsd(g.to(query.dtype), input_layout) for g in grads) + (torch.empty(0),)


def _check_mc2(input: torch.Tensor, x2: torch.Tensor, hcom: str, world_size: int,
               bias: Optional[torch.Tensor], comm_turn: int) -> dist.ProcessGroup:
    assert input.dim() == x2.dim() == 2 and input.dtype in _HALF and x2.dtype == input.dtype
    assert input.is_contiguous(), "input may not be a transposed tensor"
    assert input.shape[1] == x2.shape[0] and 256 <= x2.shape[0] < 65535, "k in [256, 65535)"
    assert world_size in (2, 4, 8) and bias is None and comm_turn == 0
    group = _groups[hcom]
    assert dist.get_world_size(group) == world_size
    return group


def npu_all_gather_base_mm(input: torch.Tensor, x2: torch.Tensor, hcom: str, world_size: int, *,
                           bias: Optional[torch.Tensor] = None, gather_index: int = 0,
                           gather_output: bool = True, comm_turn: int = 0
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    group = _check_mc2(input, x2, hcom, world_size, bias, comm_turn)
    assert gather_index == 0
    _record("npu_all_gather_base_mm", input=tuple(input.shape), x2=tuple(x2.shape))
    gathered = torch.empty((input.shape[0] * world_size, input.shape[1]), dtype=input.dtype,
                           device=input.device)
    dist.all_gather_into_tensor(gathered, input, group=group)
    return gathered @ x2, gathered if gather_output else torch.empty(0, dtype=input.dtype)


def npu_mm_reduce_scatter_base(input: torch.Tensor, x2: torch.Tensor, hcom: str,
                               world_size: int, *, reduce_op: str = "sum",
                               bias: Optional[torch.Tensor] = None, comm_turn: int = 0
                               ) -> torch.Tensor:
    group = _check_mc2(input, x2, hcom, world_size, bias, comm_turn)
    assert reduce_op == "sum" and input.shape[0] % world_size == 0
    _record("npu_mm_reduce_scatter_base", input=tuple(input.shape), x2=tuple(x2.shape))
    full = (input @ x2).contiguous()
    out = torch.empty((full.shape[0] // world_size, full.shape[1]), dtype=full.dtype,
                      device=full.device)
    dist.reduce_scatter_tensor(out, full, group=group)
    return out


def _set_compile_mode(jit_compile: bool = True) -> None:
    """torch_npu.npu.set_compile_mode(jit_compile=...): operator compilation mode."""
    assert isinstance(jit_compile, bool)
    _record("npu.set_compile_mode", jit_compile=jit_compile)


npu = types.SimpleNamespace(set_compile_mode=_set_compile_mode)

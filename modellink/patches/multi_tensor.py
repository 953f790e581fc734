"""Grad-norm and copy/scale helpers of megatron-core's optimizer, without per-tensor Python loops.

Without apex or Transformer Engine, megatron-core falls back to `local_multi_tensor_l2_norm`
(one torch.norm per tensor, then a host round trip per norm to build a tensor of them) and
`local_multi_tensor_scale` (one `dst.copy_(src * scale)` per tensor), which the grad-norm, clipping
and fp16/bf16 main-param copies call every step. These replacements take the same arguments and
compute the same values with torch's multi-tensor (_foreach_) ops. Where apex or Transformer
Engine supplied the kernels, the originals stay.
"""
from typing import Any, Callable, List, Optional, Tuple

import torch
from megatron.core import utils as mcore_utils

from modellink.patches.registry import Patch


def foreach_l2_norm(chunk_size: int, noop_flag: torch.Tensor,
                    tensor_lists: List[List[torch.Tensor]], per_tensor: bool, *args: Any
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """local_multi_tensor_l2_norm's contract: the norm over every tensor of every list, as a
    one-element fp32 tensor, and no per-tensor norms."""
    tensors = [tensor for tensors in tensor_lists for tensor in tensors]
    norms = torch._foreach_norm(tensors, 2, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms)).reshape(1), None


def foreach_scale(chunk_size: int, noop_flag: torch.Tensor, tensor_lists: List[List[torch.Tensor]],
                  scale: float) -> None:
    """local_multi_tensor_scale's contract: dst = src * scale, computed in src's dtype."""
    sources, destinations = tensor_lists
    torch._foreach_copy_(destinations,
                         sources if scale == 1.0 else torch._foreach_mul(sources, scale))


def _unless_fused(fallback: Callable, replacement: Callable) -> Callable[[Callable], Callable]:
    # The targets hold apex / Transformer Engine kernels where those are installed: their
    # signatures are not inspectable, so the fallbacks' are checked by tests/test_ops_optimizer.py.
    def choose(original: Callable) -> Callable:
        return replacement if original is fallback else original

    return choose


def multi_tensor_patches() -> List[Patch]:
    reason = "megatron-core's local fallbacks loop over tensors in Python (no extension point)"
    l2_norm = _unless_fused(mcore_utils.local_multi_tensor_l2_norm, foreach_l2_norm)
    scale = _unless_fused(mcore_utils.local_multi_tensor_scale, foreach_scale)
    return [
        Patch("megatron.core.optimizer.clip_grads.l2_norm_impl", l2_norm, reason, wraps=True),
        Patch("megatron.core.optimizer.clip_grads.multi_tensor_scale_impl", scale, reason,
              wraps=True),
        Patch("megatron.core.optimizer.optimizer.multi_tensor_scale_impl", scale, reason,
              wraps=True),
    ]

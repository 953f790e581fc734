"""RoPE frequency scaling for `--rope-scaling-type llama3|yarn` (long-context Llama 3.x / YaRN).

Both rescale the inverse frequencies; YaRN also multiplies cos/sin by an attention factor. The
formulas follow Hugging Face transformers' `_compute_llama3_parameters` and
`_compute_yarn_parameters`, so converted checkpoints keep their positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class RopeScaling:
    """Resolved settings; `original_max_positions` is the pretraining context length."""
    kind: str  # "llama3" | "yarn"
    factor: float
    original_max_positions: int
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: Optional[float] = None
    mscale_all_dim: Optional[float] = None


def base_inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def llama3_inv_freq(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Keep high frequencies, divide low ones by `factor`, blend the band in between."""
    low_freq_wavelen = s.original_max_positions / s.low_freq_factor
    high_freq_wavelen = s.original_max_positions / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def _correction_dim(rotations: float, dim: int, base: float, max_positions: int) -> float:
    return dim * math.log(max_positions / (rotations * 2 * math.pi)) / (2 * math.log(base))


def yarn_inv_freq(dim: int, base: float, s: RopeScaling) -> torch.Tensor:
    """Interpolate (divide by factor) dimensions that rotate fewer than beta_slow times over the
    original context, extrapolate those rotating more than beta_fast times, ramp in between."""
    low = max(math.floor(_correction_dim(s.beta_fast, dim, base, s.original_max_positions)), 0)
    high = min(math.ceil(_correction_dim(s.beta_slow, dim, base, s.original_max_positions)),
               dim - 1)
    if low == high:
        high += 0.001  # a zero-width ramp would divide by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = base_inv_freq(dim, base)
    interpolation = extrapolation / s.factor
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_attention_factor(s: RopeScaling) -> float:
    """The factor cos and sin are multiplied by (Hugging Face's rule)."""
    if s.mscale and s.mscale_all_dim:
        return _yarn_mscale(s.factor, s.mscale) / _yarn_mscale(s.factor, s.mscale_all_dim)
    return _yarn_mscale(s.factor)


def scaled_inv_freq(dim: int, base: float, s: RopeScaling) -> torch.Tensor:
    if s.kind == "llama3":
        return llama3_inv_freq(base_inv_freq(dim, base), s)
    return yarn_inv_freq(dim, base, s)

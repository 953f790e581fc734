"""Per-operator forward+backward time, the device's fused path against the reference path,
measured side by side in one run: repeats interleave the two paths and each reports its best
time (other processes only ever add time, so the minimum is the steadiest estimate).

    python bench/ops.py                  # CPU: tiny sizes, fp32
    python bench/ops.py --size 1b        # CUDA: the ~1B Llama's sizes (hidden 2048, 16 heads,
                                         # GQA 8, seq 4096, bf16)

Also prints the activation bytes each path keeps for backward. MC2 needs an NPU and
several ranks, so it is not measured here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from megatron.core.transformer.enums import AttnMaskType  # noqa: E402
from megatron.core.transformer.transformer_config import TransformerConfig  # noqa: E402

from modellink.ops.attention import (  # noqa: E402
    PATH_NAMES,
    AttentionSettings,
    FlashSelfAttention,
    select_attention_path,
)
from modellink.ops.norm import select_rms_norm  # noqa: E402
from modellink.ops.rotary import select_rotary  # noqa: E402
from modellink.ops.swiglu import select_swiglu  # noqa: E402

SIZES = {
    # hidden, heads, query groups, ffn, seq, micro batch, dtype
    "tiny": dict(hidden=256, heads=8, groups=4, ffn=704, seq=512, batch=2, dtype="float32"),
    "1b": dict(hidden=2048, heads=16, groups=8, ffn=5632, seq=4096, batch=1, dtype="bfloat16"),
}
Case = Tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], List[torch.Tensor]]


def _attention(path: str, size: dict) -> FlashSelfAttention:
    head_dim = size["hidden"] // size["heads"]
    config = TransformerConfig(num_layers=1, hidden_size=size["hidden"],
                               num_attention_heads=size["heads"],
                               num_query_groups=size["groups"], kv_channels=head_dim,
                               attention_dropout=0.0)
    return FlashSelfAttention(config, 1, AttnMaskType.causal, "self",
                              settings=AttentionSettings(path=path))


def build_cases(size: dict, device: str) -> Dict[str, Case]:
    dtype = getattr(torch, size["dtype"])
    s, b, h = size["seq"], size["batch"], size["hidden"]
    heads, groups = size["heads"], size["groups"]
    dim = h // heads

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    angles = torch.arange(s, device=device)[:, None] * torch.rand(dim // 2, device=device)
    freqs = torch.cat((angles, angles), dim=-1)[:, None, None, :].float()
    weight = torch.ones(h, device=device, dtype=dtype)
    norm_fused, norm_ref = select_rms_norm(device, True), select_rms_norm(device, False)
    glu_fused, glu_ref = select_swiglu(device, True), select_swiglu(device, False)
    rot_fused, rot_ref = select_rotary(device, True), select_rotary(device, False)
    path = select_attention_path(device, True)
    fused_attn, ref_attn = _attention(path, size), _attention("reference", size)
    return {
        f"rmsnorm [{norm_fused.name}]": (
            f"[{s}, {b}, {h}]", lambda x, w: norm_ref.fn(x, w, 1e-5),
            lambda x, w: norm_fused.fn(x, w, 1e-5), [rand(s, b, h), weight]),
        f"swiglu [{glu_fused.name}]": (
            f"[{s}, {b}, {2 * size['ffn']}]", glu_ref.fn, glu_fused.fn,
            [rand(s, b, 2 * size["ffn"])]),
        f"rotary q [{rot_fused.name}]": (
            f"[{s}, {b}, {heads}, {dim}]", lambda x: rot_ref.fn(x, freqs, 1.0),
            lambda x: rot_fused.fn(x, freqs, 1.0), [rand(s, b, heads, dim)]),
        f"attention [{PATH_NAMES[path]}]": (
            f"q [{s}, {b}, {heads}, {dim}], kv {groups} heads",
            lambda q, k, v: ref_attn(q, k, v, None), lambda q, k, v: fused_attn(q, k, v, None),
            [rand(s, b, heads, dim), rand(s, b, groups, dim), rand(s, b, groups, dim)]),
    }


def _step(fn: Callable[..., torch.Tensor], inputs: List[torch.Tensor], device: str
          ) -> Tuple[float, int]:
    """Seconds for forward+backward, and activation bytes kept for backward."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    kept: Dict[int, torch.UntypedStorage] = {}
    inputs_ptrs = {t.untyped_storage().data_ptr() for t in leaves}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in inputs_ptrs:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage()
        return t

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*leaves)
    saved = sum(storage.nbytes() for storage in kept.values())
    out.backward(torch.ones_like(out))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, saved


def measure(case: Case, device: str, repeats: int, warmup: int) -> Dict[str, float]:
    _, reference, fused, inputs = case
    times: Dict[str, List[float]] = {"reference": [], "fused": []}
    saved = {}
    for index in range(warmup + repeats):
        for name, fn in (("reference", reference), ("fused", fused)):
            seconds, saved[name] = _step(fn, inputs, device)
            if index >= warmup:
                times[name].append(seconds)
    result = {name: min(values) for name, values in times.items()}
    result.update({f"{name} MB": saved[name] / 2**20 for name in saved})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="default: 1b on CUDA, tiny on CPU")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    cli = parser.parse_args()
    if cli.threads:
        torch.set_num_threads(cli.threads)
    device = cli.device if cli.device != "auto" else ("cuda" if torch.cuda.is_available()
                                                      else "cpu")
    size = SIZES[cli.size or ("1b" if device == "cuda" else "tiny")]
    torch.manual_seed(0)
    print(f"device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, sizes {size}")
    print(f"{'operator [fused path]':58s} {'shape':34s} {'ref ms':>8s} {'fused ms':>8s} "
          f"{'speedup':>7s} {'ref MB':>7s} {'fused MB':>8s}")
    for name, case in build_cases(size, device).items():
        r = measure(case, device, cli.repeats, cli.warmup)
        print(f"{name:58s} {case[0]:34s} {r['reference'] * 1e3:8.2f} {r['fused'] * 1e3:8.2f} "
              f"{r['reference'] / r['fused']:6.2f}x {r['reference MB']:7.1f} "
              f"{r['fused MB']:8.1f}")


if __name__ == "__main__":
    main()

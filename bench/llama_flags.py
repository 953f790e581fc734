"""The Llama architecture flags both training benchmarks give pretrain_gpt.py for a config
dict (layers, hidden, ffn, heads, groups, seq), so the two measure the same model."""
from __future__ import annotations

from typing import List


def llama_architecture_flags(cfg: dict) -> List[str]:
    return [
        "--num-layers", str(cfg["layers"]), "--hidden-size", str(cfg["hidden"]),
        "--ffn-hidden-size", str(cfg["ffn"]), "--num-attention-heads", str(cfg["heads"]),
        "--group-query-attention", "--num-query-groups", str(cfg["groups"]),
        "--seq-length", str(cfg["seq"]), "--max-position-embeddings", str(cfg["seq"]),
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--disable-bias-linear", "--untie-embeddings-and-output-weights",
    ]

"""Training throughput: `pretrain_gpt`'s train loop vs a plain Hugging Face transformers loop.

Same Llama config, batch, sequence length, dtype and optimizer (AdamW), in one process, one
after the other; prints tokens/s of each and the ratio (and MFU on a GPU).

    python bench/train_throughput.py                  # CPU, small model
    python bench/train_throughput.py --preset 1b      # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import List

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PRESETS = {
    # hidden, layers, heads, query groups, ffn, seq, micro batch, vocab
    "cpu": dict(hidden=256, layers=4, heads=8, groups=4, ffn=704, seq=256, batch=4, vocab=2048),
    "1b": dict(hidden=2048, layers=16, heads=16, groups=8, ffn=5632, seq=4096, batch=1,
               vocab=32000),
}
H100_BF16_PEAK_FLOPS = 989e12


def _ours(cfg: dict, iters: int, bf16: bool, device: str) -> List[float]:
    from modellink.training.pretrain import pretrain

    argv = [
        "--num-layers", str(cfg["layers"]), "--hidden-size", str(cfg["hidden"]),
        "--ffn-hidden-size", str(cfg["ffn"]), "--num-attention-heads", str(cfg["heads"]),
        "--group-query-attention", "--num-query-groups", str(cfg["groups"]),
        "--seq-length", str(cfg["seq"]), "--max-position-embeddings", str(cfg["seq"]),
        "--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
        "--disable-bias-linear", "--untie-embeddings-and-output-weights",
        "--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--mock-data", "--vocab-size", str(cfg["vocab"] - 1), "--padded-vocab-size",
        str(cfg["vocab"]), "--micro-batch-size", str(cfg["batch"]),
        "--global-batch-size", str(cfg["batch"]), "--train-iters", str(iters), "--lr", "1e-4",
        "--lr-decay-style", "constant", "--weight-decay", "0.0", "--clip-grad", "0",
        "--log-interval", str(iters), "--eval-iters", "0", "--device", device,
    ] + (["--bf16"] if bf16 else [])
    return [record.seconds for record in pretrain(argv).history]


def _huggingface(cfg: dict, iters: int, bf16: bool, device: str) -> List[float]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["ffn"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["groups"], max_position_embeddings=cfg["seq"],
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), device=device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    cli = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = PRESETS[cli.preset or ("1b" if device == "cuda" else "cpu")]
    bf16 = cli.bf16 or device == "cuda"
    tokens = cfg["batch"] * cfg["seq"]

    hf = statistics.median(_huggingface(cfg, cli.iters, bf16, device)[cli.warmup:])
    ours = statistics.median(_ours(cfg, cli.iters, bf16, device)[cli.warmup:])
    print(f"model {cfg}, dtype {'bf16' if bf16 else 'fp32'}, device {device}, "
          f"threads {torch.get_num_threads()}")
    print(f"hugging face transformers: {tokens / hf:10.1f} tokens/s ({hf * 1000:.1f} ms/iter)")
    print(f"modellink pretrain_gpt:    {tokens / ours:10.1f} tokens/s ({ours * 1000:.1f} ms/iter)")
    print(f"ratio modellink / transformers: {hf / ours:.3f}")
    if device == "cuda":
        from types import SimpleNamespace

        from modellink.training.monitoring.metrics import flops_per_iteration

        flops = flops_per_iteration(SimpleNamespace(
            num_attention_heads=cfg["heads"], num_layers=cfg["layers"], hidden_size=cfg["hidden"],
            kv_channels=None, num_experts=None, ffn_hidden_size=cfg["ffn"], swiglu=True,
            global_batch_size=cfg["batch"], seq_length=cfg["seq"],
            num_query_groups=cfg["groups"], padded_vocab_size=cfg["vocab"]))
        print(f"MFU (of {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s): modellink "
              f"{flops / ours / H100_BF16_PEAK_FLOPS:.1%}, transformers "
              f"{flops / hf / H100_BF16_PEAK_FLOPS:.1%}")


if __name__ == "__main__":
    main()

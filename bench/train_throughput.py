"""Training throughput: `pretrain_gpt`'s train loop vs a plain Hugging Face transformers loop.

Same Llama config, batch, sequence length, dtype and optimizer (AdamW), in one process. The two
sides run in alternating rounds (so both see the same machine load) and each side's best round
counts: its median step time after warm-up. Prints tokens/s of each, the ratio, and where a
step's time goes on each side (forward, backward, optimizer, communication, data, other), so a
regression shows which phase it is in; MFU on a GPU.

    python bench/train_throughput.py                  # CPU, 4 layers, hidden 256, seq 256
    python bench/train_throughput.py --preset 1b      # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch

from llama_flags import llama_architecture_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PHASES = ("forward", "backward", "optimizer", "communication", "data", "other")
# Megatron-LM's timers (--timing-log-level 2) summed into each phase. forward-compute includes
# fetching the batch (batch-generator), which is taken out of it below.
_TIMER_PHASES = {
    "forward": ("forward-compute",),
    "backward": ("backward-compute",),
    "optimizer": ("optimizer",),
    "communication": ("all-grads-sync", "params-all-gather", "embedding-grads-all-reduce",
                      "non-tensor-parallel-grads-all-reduce", "forward-recv", "forward-send",
                      "backward-recv", "backward-send", "forward-send-backward-recv",
                      "backward-send-forward-recv"),
    "data": ("batch-generator",),
}
Step = Dict[str, float]  # phase -> seconds, plus "total"

PRESETS = {
    # hidden, layers, heads, query groups, ffn, seq, micro batch, vocab
    "cpu": dict(hidden=256, layers=4, heads=8, groups=4, ffn=704, seq=256, batch=4, vocab=2048),
    "1b": dict(hidden=2048, layers=16, heads=16, groups=8, ffn=5632, seq=4096, batch=1,
               vocab=32000),
}
H100_BF16_PEAK_FLOPS = 989e12


def _ours(cfg: dict, iters: int, bf16: bool, device: str) -> List[Step]:
    from modellink.training.pretrain import pretrain

    argv = llama_architecture_flags(cfg) + [
        "--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--mock-data", "--vocab-size", str(cfg["vocab"] - 1), "--padded-vocab-size",
        str(cfg["vocab"]), "--micro-batch-size", str(cfg["batch"]),
        "--global-batch-size", str(cfg["batch"]), "--train-iters", str(iters), "--lr", "1e-4",
        "--lr-decay-style", "constant", "--weight-decay", "0.0", "--clip-grad", "0",
        "--log-interval", str(iters), "--eval-iters", "0", "--device", device,
        "--timing-log-level", "2",
    ] + (["--bf16"] if bf16 else [])
    return [_phases_from_timers(record.timers, record.seconds)
            for record in pretrain(argv).history]


def _phases_from_timers(timers: Dict[str, float], total: float) -> Step:
    step = {phase: sum(timers.get(name, 0.0) for name in names)
            for phase, names in _TIMER_PHASES.items()}
    step["forward"] -= step["data"]
    step["other"] = total - sum(step.values())
    step["total"] = total
    return step


def _huggingface(cfg: dict, iters: int, bf16: bool, device: str) -> List[Step]:
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
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    steps = []
    for _ in range(iters):
        clock = _PhaseClock(sync)
        tokens = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), device=device)
        clock.lap("data")
        loss = model(input_ids=tokens, labels=tokens).loss
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.lap("optimizer")
        steps.append(clock.step())
    return steps


class _PhaseClock:
    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._start = self._last = time.perf_counter()
        self._phases: Step = dict.fromkeys(PHASES, 0.0)

    def lap(self, phase: str) -> None:
        self._sync()
        now = time.perf_counter()
        self._phases[phase] += now - self._last
        self._last = now

    def step(self) -> Step:
        return dict(self._phases, total=self._last - self._start)


def _round_median(steps: List[Step], warmup: int) -> Step:
    """Per phase, the median over the round's steps after warm-up."""
    return {key: statistics.median(step[key] for step in steps[warmup:]) for key in steps[0]}


def _load() -> str:
    return "{:.2f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else "n/a"


def _breakdown(step: Step) -> str:
    return "  ".join(f"{phase} {step[phase] * 1000:7.1f}" for phase in PHASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--iters", type=int, default=8, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2, help="steps of a round not counted")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds per side; each side's best round counts")
    parser.add_argument("--bf16", action="store_true")
    cli = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = PRESETS[cli.preset or ("1b" if device == "cuda" else "cpu")]
    bf16 = cli.bf16 or device == "cuda"
    tokens = cfg["batch"] * cfg["seq"]

    hf_rounds, our_rounds, rounds_log = [], [], []
    for index in range(cli.rounds):
        hf_rounds.append(_round_median(_huggingface(cfg, cli.iters, bf16, device), cli.warmup))
        our_rounds.append(_round_median(_ours(cfg, cli.iters, bf16, device), cli.warmup))
        rounds_log.append(f"  round {index + 1}: transformers {hf_rounds[-1]['total'] * 1000:.1f}"
                          f" ms, modellink {our_rounds[-1]['total'] * 1000:.1f} ms, ratio "
                          f"{hf_rounds[-1]['total'] / our_rounds[-1]['total']:.3f}, "
                          f"1-min load {_load()}")
    hf, ours = (min(rounds, key=lambda step: step["total"]) for rounds in (hf_rounds, our_rounds))
    ratios = [h["total"] / o["total"] for h, o in zip(hf_rounds, our_rounds)]
    print(f"model {cfg}, dtype {'bf16' if bf16 else 'fp32'}, device {device}, "
          f"threads {torch.get_num_threads()}, best of {cli.rounds} alternating rounds")
    print("\n".join(rounds_log))
    # Rounds run back to back share the machine's load: their spread says how far to trust
    # the best-of ratio below.
    print(f"per-round ratio: min {min(ratios):.3f}, median {statistics.median(ratios):.3f}, "
          f"max {max(ratios):.3f}")
    print(f"hugging face transformers: {tokens / hf['total']:10.1f} tokens/s "
          f"({hf['total'] * 1000:.1f} ms/iter)")
    print(f"modellink pretrain_gpt:    {tokens / ours['total']:10.1f} tokens/s "
          f"({ours['total'] * 1000:.1f} ms/iter)")
    print(f"ratio modellink / transformers: {hf['total'] / ours['total']:.3f}")
    print("ms per step by phase (median of the best round):")
    print(f"  transformers: {_breakdown(hf)}")
    print(f"  modellink:    {_breakdown(ours)}")
    if device == "cuda":
        from types import SimpleNamespace

        from modellink.training.monitoring.metrics import flops_per_iteration

        flops = flops_per_iteration(SimpleNamespace(
            num_attention_heads=cfg["heads"], num_layers=cfg["layers"], hidden_size=cfg["hidden"],
            kv_channels=None, num_experts=None, ffn_hidden_size=cfg["ffn"], swiglu=True,
            global_batch_size=cfg["batch"], seq_length=cfg["seq"],
            num_query_groups=cfg["groups"], padded_vocab_size=cfg["vocab"]))
        print(f"MFU (of {H100_BF16_PEAK_FLOPS / 1e12:.0f} TFLOP/s): modellink "
              f"{flops / ours['total'] / H100_BF16_PEAK_FLOPS:.1%}, transformers "
              f"{flops / hf['total'] / H100_BF16_PEAK_FLOPS:.1%}")


if __name__ == "__main__":
    main()

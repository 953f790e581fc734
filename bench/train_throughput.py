"""Training throughput: `pretrain_gpt`'s train loop vs a plain Hugging Face transformers loop.

Same Llama config, batch, sequence length, dtype and optimizer (AdamW), in one process. Within
a round both sides are built once and then step in turn, one step each, their order swapped
every step, so machine load that comes and goes (on a shared VM it moves step times by 10-30%)
lands on both alike. Our side is `pretrain()`'s own set-up and train loop, advanced one
iteration per turn. Each side's figure is the median step after warm-up of its best round;
the median of the per-step ratios is printed beside it. Also where a step's time goes on each
side (forward, backward, optimizer, communication, data, other), so a regression shows which
phase it is in; MFU on a GPU.

    python bench/train_throughput.py                  # CPU, 4 layers, hidden 256, seq 256
    python bench/train_throughput.py --preset 1b      # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

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


def _our_argv(cfg: dict, bf16: bool, device: str) -> List[str]:
    return llama_architecture_flags(cfg) + [
        "--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
        "--use-fused-rotary-pos-emb",
        "--attention-dropout", "0", "--hidden-dropout", "0",
        "--mock-data", "--vocab-size", str(cfg["vocab"] - 1), "--padded-vocab-size",
        str(cfg["vocab"]), "--micro-batch-size", str(cfg["batch"]),
        "--global-batch-size", str(cfg["batch"]), "--train-iters", "1", "--lr", "1e-4",
        "--lr-decay-style", "constant", "--weight-decay", "0.0", "--clip-grad", "0",
        "--log-interval", "1000000", "--eval-iters", "0", "--device", device,
        "--timing-log-level", "2",
    ] + (["--bf16"] if bf16 else [])


def _phases_from_timers(timers: Dict[str, float], total: float) -> Step:
    step = {phase: sum(timers.get(name, 0.0) for name in names)
            for phase, names in _TIMER_PHASES.items()}
    step["forward"] -= step["data"]
    step["other"] = total - sum(step.values())
    step["total"] = total
    return step


class _Ours:
    """pretrain()'s loop, one iteration per call (its recorded step time and timers)."""

    def __init__(self, run: Any) -> None:
        self._run = run

    def step(self) -> Step:
        from modellink.training.loop import train

        run = self._run
        run.args.train_iters = run.state.iteration + 1
        record = train(run.args, run.model, run.optimizer, run.scheduler, run.train_iters,
                       None, run.state, forward=run.forward).history[-1]
        return _phases_from_timers(record.timers, record.seconds)


class _HuggingFace:
    def __init__(self, cfg: dict, bf16: bool, device: str) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["ffn"],
            num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
            num_key_value_heads=cfg["groups"], max_position_embeddings=cfg["seq"],
            tie_word_embeddings=False, attn_implementation="sdpa",
        )
        dtype = torch.bfloat16 if bf16 else torch.float32
        self._cfg, self._device = cfg, device
        self._model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
        self._optimizer = torch.optim.AdamW(self._model.parameters(), lr=1e-4, weight_decay=0.0)
        self._sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(self) -> Step:
        cfg = self._cfg
        clock = _PhaseClock(self._sync)
        tokens = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"]), device=self._device)
        clock.lap("data")
        loss = self._model(input_ids=tokens, labels=tokens).loss
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        clock.lap("optimizer")
        return clock.step()


def _round(cfg: dict, iters: int, bf16: bool, device: str) -> Tuple[List[Step], List[Step]]:
    """Both sides built, then `iters` turns of one step each, the order swapped every turn."""
    from modellink.training.pretrain import parse_training_args, training_session

    args, tokenizer = parse_training_args(_our_argv(cfg, bf16, device))
    with training_session(args, tokenizer) as run:
        sides = (_HuggingFace(cfg, bf16, device), _Ours(run))
        steps: Tuple[List[Step], List[Step]] = ([], [])
        for turn in range(iters):
            for index in ((0, 1) if turn % 2 == 0 else (1, 0)):
                steps[index].append(sides[index].step())
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


def _round_median(steps: List[Step]) -> Step:
    """Per phase, the median over the round's steps."""
    return {key: statistics.median(step[key] for step in steps) for key in steps[0]}


def _load() -> str:
    return "{:.2f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else "n/a"


def _breakdown(step: Step) -> str:
    return "  ".join(f"{phase} {step[phase] * 1000:7.1f}" for phase in PHASES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--iters", type=int, default=24, help="steps per side per round")
    parser.add_argument("--warmup", type=int, default=4, help="steps of a round not counted")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds (both sides built anew); each side's best round counts")
    parser.add_argument("--bf16", action="store_true")
    cli = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = PRESETS[cli.preset or ("1b" if device == "cuda" else "cpu")]
    bf16 = cli.bf16 or device == "cuda"
    tokens = cfg["batch"] * cfg["seq"]

    hf_rounds, our_rounds, step_ratios, rounds_log = [], [], [], []
    for index in range(cli.rounds):
        hf_steps, our_steps = (steps[cli.warmup:] for steps in _round(cfg, cli.iters, bf16,
                                                                      device))
        hf_rounds.append(_round_median(hf_steps))
        our_rounds.append(_round_median(our_steps))
        step_ratios += [h["total"] / o["total"] for h, o in zip(hf_steps, our_steps)]
        rounds_log.append(f"  round {index + 1}: transformers {hf_rounds[-1]['total'] * 1000:.1f}"
                          f" ms, modellink {our_rounds[-1]['total'] * 1000:.1f} ms, ratio "
                          f"{hf_rounds[-1]['total'] / our_rounds[-1]['total']:.3f}, "
                          f"1-min load {_load()}")
    hf, ours = (min(rounds, key=lambda step: step["total"]) for rounds in (hf_rounds, our_rounds))
    print(f"model {cfg}, dtype {'bf16' if bf16 else 'fp32'}, device {device}, "
          f"threads {torch.get_num_threads()}, best of {cli.rounds} rounds of {cli.iters} "
          f"steps per side, taken in turn")
    print("\n".join(rounds_log))
    # Each ratio compares two steps taken back to back, under the same load.
    print(f"per-step ratio over {len(step_ratios)} pairs: median "
          f"{statistics.median(step_ratios):.3f}, quartiles "
          f"{' - '.join(f'{q:.3f}' for q in statistics.quantiles(step_ratios, n=4)[::2])}")
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

"""`inference.py`: load a checkpoint and run ModelLink's generation tasks or the chat."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

import torch

from modellink.inference.arguments import INFERENCE_TASKS, parse_inference_args
from modellink.inference.chat import chat
from modellink.inference.generation import (
    GenerationConfig,
    check_prompt_lengths,
    detokenize_reply,
    generate,
    stream_generate,
)
from modellink.inference.model import InferenceModel, load_model
from modellink.inference.prompting import PromptFormat, prompt_format

TITLES = {"greedy": "Greedy Search", "do_sample": "Sampling",
          "beam_search": "Beam Search", "beam_search_with_sampling": "Beam Search with Sampling",
          "return_output_log_probs": "Sampling with Output Log Probs"}


def _print(text: str, end: str = "\n") -> None:
    if torch.distributed.get_rank() == 0:
        print(text, end=end, flush=True)


def _config(args: argparse.Namespace, fmt: PromptFormat, task: str) -> GenerationConfig:
    sampled = task in ("do_sample", "beam_search_with_sampling", "return_output_log_probs")
    beams = args.num_beams if task.startswith("beam_search") else 1
    return GenerationConfig.from_args(args, do_sample=sampled, num_beams=beams,
                                      stop_token_ids=fmt.stop_ids(),
                                      return_log_probs=task == "return_output_log_probs")


def _run_task(model: InferenceModel, args: argparse.Namespace, fmt: PromptFormat,
              task: str) -> None:
    config = _config(args, fmt, task)
    prompt = fmt.encode([{"role": "user", "content": args.prompt}])
    check_prompt_lengths([prompt], config.max_length)
    _print(f"\n{'=' * 16} {TITLES[task]} {'=' * 16}\nYou:\n{args.prompt}\n\nModelLink:")
    if config.num_beams > 1:
        _print(generate(model, [prompt], config)[0].text)
        return
    if config.return_log_probs:
        result = generate(model, [prompt], config)[0]
        _print(result.text)
        _print(f"tokens: {result.token_ids}\nlog probs: "
               f"{[round(p, 4) for p in result.log_probs]}")
        return
    reply: List[int] = []
    shown = ""
    for token in stream_generate(model, prompt, config):  # print tokens as they come
        reply.append(token)
        text = detokenize_reply(model, reply, set(config.stop_token_ids))
        _print(text[len(shown):], end="")
        shown = text
    _print("")


def run(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_inference_args(argv)
    model = load_model(args)
    try:
        fmt = prompt_format(args, model.tokenizer)
        tasks = args.task or [t for t in INFERENCE_TASKS if t != "chat"]
        for task in tasks:
            if task == "chat":
                chat(model, _config(args, fmt, task), fmt, args.history_turns)
            else:
                _run_task(model, args, fmt, task)
    finally:
        model.close()
        torch.distributed.destroy_process_group()


def main() -> int:
    from modellink.errors import run_cli

    return run_cli(lambda: run(sys.argv[1:]))

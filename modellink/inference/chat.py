"""Interactive chat: multi-turn history in the model's prompt format, replies streamed.

Rank 0 reads the user's lines and broadcasts them, so every rank runs the same generation.
`clear` forgets the history, `exit` or `quit` (or end of input) ends the chat. Only the last
--history-turns exchanges are kept in the prompt; when even the newest question does not fit
in --max-length the question is refused and the chat goes on.
"""
from __future__ import annotations

import sys
from typing import Callable, List, Optional, TextIO

import torch

from modellink.inference.generation import GenerationConfig, detokenize_reply, stream_generate
from modellink.inference.model import InferenceModel
from modellink.inference.prompting import Message, PromptFormat

CLEAR_COMMANDS = ("clear",)
QUIT_COMMANDS = ("exit", "quit")


def _read_line(read: Callable[[], str]) -> Optional[str]:
    """Rank 0's next input line on every rank; None at end of input."""
    box: List[Optional[str]] = [None]
    if torch.distributed.get_rank() == 0:
        line = read()
        box[0] = line.rstrip("\n") if line else None
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _history_prompt(history: List[Message], question: str, turns: int) -> List[Message]:
    kept = history[len(history) - 2 * turns:] if turns > 0 else []
    return kept + [{"role": "user", "content": question}]


def chat(model: InferenceModel, config: GenerationConfig, fmt: PromptFormat, history_turns: int,
         stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None) -> None:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    printing = torch.distributed.get_rank() == 0
    stops = set(fmt.stop_ids())

    def say(text: str) -> None:
        if printing:
            stdout.write(text)
            stdout.flush()

    say(f"Chat: type your message; '{CLEAR_COMMANDS[0]}' clears the history, "
        f"'{QUIT_COMMANDS[0]}' ends.\n")
    history: List[Message] = []
    while True:
        say("\nYou >> ")
        line = _read_line(stdin.readline)
        if line is None or line.strip().lower() in QUIT_COMMANDS:
            say("\n")
            return
        question = line.strip()
        if not question:
            continue
        if question.lower() in CLEAR_COMMANDS:
            history = []
            say("(history cleared)\n")
            continue
        messages = _history_prompt(history, question, history_turns)
        prompt = fmt.encode(messages)
        while len(prompt) >= config.max_length and len(messages) > 1:
            messages = messages[2:]  # drop the oldest exchange until the question fits
            prompt = fmt.encode(messages)
        if len(prompt) >= config.max_length:
            say(f"(the question is {len(prompt)} tokens, longer than --max-length "
                f"{config.max_length}; ask something shorter)\n")
            continue
        say("\nModelLink >> ")
        reply: List[int] = []
        shown = ""
        for token in stream_generate(model, prompt, config):
            reply.append(token)
            text = detokenize_reply(model, reply, stops)
            say(text[len(shown):])  # decode the whole reply: pieces can merge across tokens
            shown = text
        say("\n")
        history = messages + [{"role": "assistant", "content": shown}]

"""`generate()`: greedy, sampled and beam-search continuation of prompts, and token streaming.

Prompts of different lengths share one batch as in Megatron-LM: decoding starts at the
shortest prompt's end, and a row whose prompt is longer is fed its own next prompt token
instead of the chosen one until its prompt is used up. No padding ever sits between real
tokens, so attention needs no mask and the KV cache stays one contiguous block per row.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from modellink.argument_errors import ArgumentError
from modellink.inference.model import InferenceModel
from modellink.inference.sampling import SamplingSettings, choose_tokens

Prompts = Union[str, Sequence[str], Sequence[Sequence[int]]]


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    max_length: int = 256  # prompt + generated tokens; a longer prompt is an error
    do_sample: bool = False
    top_k: int = 0
    top_p: float = 0.0
    temperature: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    use_kv_cache: bool = True
    stop_token_ids: Optional[Tuple[int, ...]] = None  # None: the tokenizer's end of document
    return_log_probs: bool = False
    seed: int = 1234

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: object) -> "GenerationConfig":
        values = dict(max_new_tokens=args.max_new_tokens, max_length=args.max_length,
                      top_k=args.top_k, top_p=args.top_p, temperature=args.temperature,
                      use_kv_cache=args.use_kv_cache, seed=args.seed)
        values.update(overrides)
        return cls(**values)

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(self.do_sample, self.temperature, self.top_k, self.top_p)


@dataclass
class Generation:
    prompt_ids: List[int]
    token_ids: List[int]  # generated ids, ending with the stop token when one was produced
    text: str  # the generated ids decoded, stop token left out
    log_probs: Optional[List[float]] = None  # the model's log-probability of each generated id


@dataclass
class Step:
    """One decoding step: rows where `active` is set produced `tokens` (ids of that row)."""
    tokens: torch.Tensor
    active: torch.Tensor
    log_probs: Optional[torch.Tensor]


def encode_prompts(model: InferenceModel, prompts: Prompts) -> List[List[int]]:
    if isinstance(prompts, str) or (len(prompts) > 0 and isinstance(prompts[0], int)):
        prompts = [prompts]  # one prompt, as text or as token ids
    encoded = [model.tokenizer.tokenize(p) if isinstance(p, str) else [int(t) for t in p]
               for p in prompts]
    if not encoded or any(len(p) == 0 for p in encoded):
        raise ArgumentError("every prompt needs at least one token")
    return encoded


def check_prompt_lengths(prompts: Sequence[Sequence[int]], max_length: int) -> None:
    for prompt in prompts:
        if len(prompt) >= max_length:
            raise ArgumentError(f"prompt is {len(prompt)} tokens, which leaves no room to generate "
                             f"within --max-length {max_length}")


def stop_ids(model: InferenceModel, config: GenerationConfig) -> Tuple[int, ...]:
    return config.stop_token_ids if config.stop_token_ids is not None else (model.tokenizer.eod,)


def decode_steps(model: InferenceModel, prompts: Sequence[Sequence[int]], config: GenerationConfig
                 ) -> Iterator[Step]:
    """Greedy or sampled decoding of a batch; every rank gets the same steps."""
    check_prompt_lengths(prompts, config.max_length)
    lengths = torch.tensor([len(p) for p in prompts])
    limits = torch.clamp(lengths + config.max_new_tokens, max=config.max_length)
    total, batch = int(limits.max()), len(prompts)
    tokens = torch.full((batch, total), model.tokenizer.pad, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = torch.tensor(prompt)
    stops = torch.tensor(stop_ids(model, config))
    cache = model.decoding_cache(batch, total) if config.use_kv_cache else None
    generator = torch.Generator(device=model.device).manual_seed(config.seed)
    done = torch.zeros(batch, dtype=torch.bool)
    fed, position = 0, int(lengths.min())
    while position < total and not bool(done.all()):
        logits = model.logits(tokens[:, fed:position] if cache is not None
                              else tokens[:, :position], cache)
        chosen = log_probs = None
        if logits is not None:
            last = logits[:, -1, :]
            chosen = choose_tokens(last, config.sampling, generator)
            if config.return_log_probs:
                log_probs = torch.log_softmax(last, dim=-1).gather(1, chosen[:, None])[:, 0]
        chosen = model.share_from_last_stage(chosen, (batch,), torch.long).cpu()
        if config.return_log_probs:
            log_probs = model.share_from_last_stage(log_probs, (batch,), torch.float32).cpu()
        started = position >= lengths
        active = started & ~done
        tokens[:, position] = torch.where(active, chosen, tokens[:, position])
        yield Step(chosen, active, log_probs)
        done |= active & (torch.isin(chosen, stops) | (position + 1 >= limits))
        fed, position = position, position + 1


def _collect(model: InferenceModel, prompts: Sequence[Sequence[int]], config: GenerationConfig
             ) -> List[Generation]:
    outputs = [Generation(list(p), [], "", [] if config.return_log_probs else None)
               for p in prompts]
    for step in decode_steps(model, prompts, config):
        for row in torch.nonzero(step.active).flatten().tolist():
            outputs[row].token_ids.append(int(step.tokens[row]))
            if step.log_probs is not None:
                outputs[row].log_probs.append(float(step.log_probs[row]))
    stops = set(stop_ids(model, config))
    for out in outputs:
        out.text = detokenize_reply(model, out.token_ids, stops)
    return outputs


def detokenize_reply(model: InferenceModel, token_ids: Sequence[int], stops: set) -> str:
    ids = list(token_ids)
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    return model.tokenizer.detokenize(ids)


def generate(model: InferenceModel, prompts: Prompts, config: Optional[GenerationConfig] = None,
             **overrides: object) -> List[Generation]:
    """Continue each prompt (text, or token ids); one Generation per prompt, on every rank.

    `overrides` replace fields of `config` (default: the model's command-line settings), e.g.
    generate(model, "Hi", max_new_tokens=20, num_beams=4)."""
    config = config or GenerationConfig.from_args(model.args)
    config = dataclasses.replace(config, **overrides) if overrides else config
    encoded = encode_prompts(model, prompts)
    if config.num_beams > 1:
        from modellink.inference.beam_search import beam_search

        return [beam_search(model, prompt, config) for prompt in encoded]
    return _collect(model, encoded, config)


def stream_generate(model: InferenceModel, prompt: Union[str, Sequence[int]],
                    config: Optional[GenerationConfig] = None, **overrides: object
                    ) -> Iterator[int]:
    """Yield each generated token id of one prompt as soon as it is chosen (greedy/sampling)."""
    config = config or GenerationConfig.from_args(model.args)
    config = dataclasses.replace(config, **overrides) if overrides else config
    if config.num_beams > 1:
        raise ValueError("streaming needs num_beams 1: beam search settles the text at the end")
    for step in decode_steps(model, encode_prompts(model, [prompt]), config):
        if bool(step.active[0]):
            yield int(step.tokens[0])

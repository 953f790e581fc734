"""Beam search (optionally sampled) over one prompt, step for step as transformers does it.

transformers' vectorised `_beam_search` (batch of one, early_stopping=False): each step
keeps the best K = max(2, 1 + #stop ids) x beams continuations of all beams, the best
`beams` of those that did not stop continue, those that stopped among the top `beams` enter
the finished pool with score sum(log p) / generated_length ** length_penalty, and the search
ends when no running beam can beat the worst finished one or every candidate stopped. Same
tensor operations in the same order, so the chosen tokens and tie-breaking agree with
`transformers.generate(num_beams=...)`.

Only the K candidates (scores and flat indices) are decided on the last pipeline stage and
broadcast; the bookkeeping below runs identically on every rank.
"""
from __future__ import annotations

from typing import List

import torch

from modellink.inference.generation import (
    Generation,
    GenerationConfig,
    check_prompt_lengths,
    detokenize_reply,
    stop_ids,
)
from modellink.inference.model import InferenceModel
from modellink.inference.sampling import filter_scores

_NEG = -1.0e9


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [1, n, ...] rows picked by index [1, m]."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


def _candidates(model: InferenceModel, logits: torch.Tensor, running_scores: torch.Tensor,
                config: GenerationConfig, keep: int, n_stop: int, generator: torch.Generator
                ) -> tuple:
    log_probs = torch.log_softmax(logits[:, -1, :], dim=-1)
    log_probs = filter_scores(log_probs, config.sampling, min_keep=n_stop + 1)
    accumulated = (log_probs + running_scores[0][:, None]).reshape(1, -1)
    if config.do_sample:
        index = torch.multinomial(torch.softmax(accumulated, dim=-1), keep, generator=generator)
        return torch.gather(accumulated, 1, index), index
    return torch.topk(accumulated, k=keep)


def beam_search(model: InferenceModel, prompt: List[int], config: GenerationConfig) -> Generation:
    check_prompt_lengths([prompt], config.max_length)
    beams, prompt_len = config.num_beams, len(prompt)
    max_len = min(prompt_len + config.max_new_tokens, config.max_length)
    stops = torch.tensor(stop_ids(model, config))
    keep = max(2, 1 + len(stops)) * beams
    top_beams = torch.arange(keep) < beams
    vocab = model.vocab_size

    running = torch.full((1, beams, max_len), model.tokenizer.pad, dtype=torch.long)
    running[:, :, :prompt_len] = torch.tensor(prompt)
    sequences, lengths = running.clone(), torch.full((1, beams), prompt_len)
    # Only the first beam starts live, so the first step does not pick the same token twice.
    running_scores = torch.zeros(1, beams)
    running_scores[:, 1:] = _NEG
    scores = torch.full((1, beams), _NEG)
    finished = torch.zeros(1, beams, dtype=torch.bool)
    improvable = torch.ones(1, 1, dtype=torch.bool)
    cache = model.decoding_cache(beams, max_len) if config.use_kv_cache else None
    generator = torch.Generator(device=model.device).manual_seed(config.seed)
    cur = prompt_len
    while True:
        step_input = running[0, :, cur - 1:cur] if cache is not None and cur > prompt_len \
            else running[0, :, :cur]
        logits = model.logits(step_input, cache)
        values = index = None
        if logits is not None:
            values, index = _candidates(model, logits, running_scores, config, keep, len(stops),
                                        generator)
        values = model.share_from_last_stage(values, (1, keep), torch.float32).cpu()
        index = model.share_from_last_stage(index, (1, keep), torch.long).cpu()

        parents, tokens = index // vocab, index % vocab
        candidates = _gather(running, parents)
        candidates[:, :, cur] = tokens
        stopped = torch.isin(tokens, stops) | (cur + 1 >= max_len)

        # Candidates that stopped cannot continue; the best `beams` others do.
        live_scores = values + stopped.to(torch.float32) * _NEG
        chosen = torch.topk(live_scores, k=beams)[1]
        running = _gather(candidates, chosen)
        running_scores = _gather(live_scores, chosen)
        parent_of_running = _gather(parents, chosen)

        # Stopped candidates among the top `beams` may enter the finished pool.
        just_finished = stopped & top_beams[None, :]
        final_scores = values / ((cur + 1 - prompt_len) ** config.length_penalty)
        final_scores = final_scores + (~improvable).to(torch.float32) * _NEG
        final_scores = final_scores + (~just_finished) * _NEG
        merged = torch.topk(torch.cat((scores, final_scores), dim=1), k=beams)[1]
        sequences = _gather(torch.cat((sequences, candidates), dim=1), merged)
        scores = _gather(torch.cat((scores, final_scores), dim=1), merged)
        finished = _gather(torch.cat((finished, just_finished), dim=1), merged)
        lengths = _gather(torch.cat((lengths, torch.full((1, keep), cur + 1)), dim=1), merged)

        if cache is not None:
            cache.swap_key_value_dict(parent_of_running[0])
        cur += 1
        best_possible = running_scores[:, :1] / ((cur - prompt_len) ** config.length_penalty)
        worst_finished = torch.where(finished, torch.min(scores, dim=1, keepdim=True)[0], _NEG)
        improvable = improvable & torch.any(best_possible > worst_finished, dim=-1, keepdim=True)
        if not (bool(improvable.any()) and not bool(stopped.all())):
            break

    token_ids = sequences[0, 0, prompt_len:int(lengths[0, 0])].tolist()
    text = detokenize_reply(model, token_ids, set(stops.tolist()))
    return Generation(list(prompt), token_ids, text)

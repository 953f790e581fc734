"""A Megatron checkpoint loaded for forward-only use at its own TP/PP layout.

Every rank calls every method with the same arguments (the same token ids): the first
pipeline stage embeds them, hidden states travel stage to stage by send/recv, and the last
stage returns the logits, gathered over tensor-parallel ranks. Decisions taken on those
logits (the next token, a score) are made on the last stage and broadcast to the other
model-parallel ranks with `share_from_last_stage`, so that every rank continues alike.

KV cache: for the common dense layout, `decoding_cache` gives a `layer_walk.DecodingCache` and
steps walk the layers' weights directly (layer_walk.py says why); otherwise, and from
`new_cache`, megatron-core's StaticInferenceContext, filled by GPTModel itself (keys/values per
layer, preallocated for the batch and --max-length). megatron-core's StaticInferenceEngine
is not used: on this backend it measured ~70 ms per token on a 4-layer toy model where the
loop below takes ~6 ms, it has no beam search, and its dynamic path needs flash-attn kernels.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch
from megatron.core import parallel_state
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.num_microbatches_calculator import destroy_num_microbatches_calculator

from modellink.data.tokenizers import Tokenizer, build_tokenizer
from modellink.inference.layer_walk import DecodingCache, LayerWalk
from modellink.models.gpt import build_model_chunks, transformer_config_from_args
from modellink.training.checkpoint.checkpointing import CheckpointError, load_checkpoint, read_tracker
from modellink.training.initialize import initialize, shutdown
from modellink.training.pretrain import padded_vocab_size


@dataclass
class InferenceModel:
    args: argparse.Namespace
    chunks: List[torch.nn.Module]
    tokenizer: Tokenizer
    hidden_size: int
    dtype: torch.dtype
    device: torch.device
    walk: Optional[LayerWalk] = None

    @property
    def vocab_size(self) -> int:
        """Logits beyond the tokenizer's vocabulary are padding rows and never chosen."""
        return self.tokenizer.vocab_size

    @property
    def is_last_stage(self) -> bool:
        return parallel_state.is_pipeline_last_stage(ignore_virtual=True)

    def new_cache(self, batch: int, max_length: int) -> StaticInferenceContext:
        """A cache that megatron-core's own forward fills."""
        return StaticInferenceContext(batch, max_length)

    def decoding_cache(self, batch: int, max_length: int
                       ) -> Union[DecodingCache, StaticInferenceContext]:
        """The fastest cache this model decodes with (the layer walk's where it applies)."""
        if self.walk is None:
            return self.new_cache(batch, max_length)
        return self.walk.new_cache(batch, max_length)

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor,
               cache: Union[DecodingCache, StaticInferenceContext, None] = None
               ) -> Optional[torch.Tensor]:
        """float32 logits [b, s, vocab] on the last stage (None elsewhere); with `cache`, only
        the last position's ([b, 1, vocab]) and `tokens` continue the cached sequence."""
        offset = cache.sequence_len_offset if cache is not None else 0
        tokens = tokens.to(self.device)
        positions = torch.arange(offset, offset + tokens.shape[1],
                                 device=self.device).unsqueeze(0).expand_as(tokens)
        if isinstance(cache, DecodingCache):
            output = self.walk.forward(tokens, positions, cache)
        else:
            output = self._pipeline_forward(tokens, positions, cache)
        if cache is not None:
            cache.increment_sequence_len_offset(tokens.shape[1])
        if not self.is_last_stage:
            return None
        return output[..., :self.vocab_size].float()

    def _pipeline_forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                          cache: Optional[StaticInferenceContext]) -> torch.Tensor:
        # As tools/checkpoint/dump_logits.py: chunks in pipeline order, plain send/recv.
        first = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        shape = (tokens.shape[1], tokens.shape[0], self.hidden_size)
        output = None
        for index, chunk in enumerate(self.chunks):
            if not (first and index == 0):
                hidden = torch.empty(shape, dtype=self.dtype, device=self.device)
                torch.distributed.recv(hidden,
                                       parallel_state.get_pipeline_model_parallel_prev_rank())
                chunk.set_input_tensor(hidden)
            output = chunk(tokens, positions, None, inference_context=cache,
                           runtime_gather_output=True)
            if not (self.is_last_stage and index == len(self.chunks) - 1):
                torch.distributed.send(output.contiguous(),
                                       parallel_state.get_pipeline_model_parallel_next_rank())
        return output

    def share_from_last_stage(self, value: Optional[torch.Tensor], shape: Sequence[int],
                              dtype: torch.dtype) -> torch.Tensor:
        """`value` as the last stage's first tensor-parallel rank computed it, on every rank."""
        if not self.is_last_stage or value is None:
            value = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        value = value.to(self.device).contiguous()
        if self.is_last_stage and parallel_state.get_tensor_model_parallel_world_size() > 1:
            torch.distributed.broadcast(value, parallel_state.get_tensor_model_parallel_src_rank(),
                                        group=parallel_state.get_tensor_model_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.broadcast(value,
                                        parallel_state.get_pipeline_model_parallel_last_rank(),
                                        group=parallel_state.get_pipeline_model_parallel_group())
        return value

    def close(self) -> None:
        """Release the model-parallel groups; the process group stays for the next model
        (gloo cannot rendezvous twice on torchrun's store)."""
        destroy_num_microbatches_calculator()
        parallel_state.destroy_model_parallel()


def load_model(args: argparse.Namespace) -> InferenceModel:
    """Tokenizer, process groups, model chunks and weights for parsed inference flags."""
    if parallel_state.model_parallel_is_initialized():
        raise RuntimeError("a model is already loaded in this process; close() it first "
                           "(megatron-core keeps one set of parallel groups per process)")
    tokenizer = build_tokenizer(args)
    args.padded_vocab_size = padded_vocab_size(tokenizer.vocab_size, args)
    if read_tracker(args.load) is None:
        raise CheckpointError(f"no checkpoint at --load {args.load} (expected "
                              f"latest_checkpointed_iteration.txt and iter_*/ folders)")
    # Weights only: no optimizer, RNG or iteration state is wanted for generation.
    args.finetune, args.no_load_optim, args.no_load_rng = True, True, True
    backend = initialize(args)
    try:
        config = transformer_config_from_args(args, backend.device)
        chunks = build_model_chunks(args, config)
        load_checkpoint(args, chunks, None, None)
    except BaseException:
        shutdown()  # a failed start leaves nothing behind
        raise
    device = torch.device("cpu") if backend.device == "cpu" else \
        torch.device("cuda", torch.cuda.current_device())  # transfer_to_npu maps it on NPU
    for chunk in chunks:
        chunk.to(device).eval()
        chunk.requires_grad_(False)
    return InferenceModel(args, chunks, tokenizer, args.hidden_size, config.params_dtype, device,
                          LayerWalk.of(chunks))

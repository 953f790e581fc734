"""megatron-core's GPTModel with the embedding and output features some families need:

- `--input-embeds-norm`: word embeddings times sqrt(hidden size) (Gemma),
- `--embed-layernorm`: a norm on the word embeddings, `embedding.word_embeddings_layernorm`
  (Bloom),
- `--output-logit-softcapping` c: logits z become c * tanh(z / c) (Gemma 2),
- MiniCPM's `--scale-emb` (word embeddings times it), `--dim-model-base` (logits divided by
  hidden size / it, which equals dividing the output layer's input: it has no bias) and
  `--scale-depth` (each attention and MLP output, bias included, times it / sqrt(layers)).

They run as forward hooks on the model's own word-embedding, output, attention and MLP modules,
so parameter names, megatron-core's forward and its loss stay as they are. The word embeddings reach the
hook already reduced across tensor-parallel ranks (and, with sequence parallelism, scattered
along the sequence, which is why the norm's weights are marked sequence-parallel by the norm
itself), before embedding dropout.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.spec_utils import ModuleSpec, build_module


class ModelLinkGPTModel(GPTModel):
    def __init__(self, *args: Any, scale_embeddings: bool = False,
                 embedding_norm: Optional[ModuleSpec] = None,
                 output_softcap: Optional[float] = None, embedding_scale: Optional[float] = None,
                 logits_divisor: Optional[float] = None, branch_scale: Optional[float] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scale_embeddings = scale_embeddings
        self._output_softcap = output_softcap
        self._embedding_scale = embedding_scale
        self._logits_divisor = logits_divisor
        self._branch_scale = branch_scale
        if self.pre_process and embedding_norm is not None:
            self.embedding.word_embeddings_layernorm = build_module(
                embedding_norm, config=self.config, hidden_size=self.config.hidden_size,
                eps=self.config.layernorm_epsilon)
        if self.pre_process and (scale_embeddings or embedding_norm is not None
                                 or embedding_scale is not None):
            self.embedding.word_embeddings.register_forward_hook(self._embeddings_hook)
        if self.post_process and (output_softcap is not None or logits_divisor is not None):
            self.output_layer.register_forward_hook(self._logits_hook)
        if branch_scale is not None:
            for layer in self.decoder.layers:
                layer.self_attention.register_forward_hook(self._branch_hook)
                layer.mlp.register_forward_hook(self._branch_hook)

    def _embeddings_hook(self, module: torch.nn.Module, inputs: Any,
                         output: torch.Tensor) -> torch.Tensor:
        if self._scale_embeddings:
            # In the embeddings' dtype, as Gemma multiplies.
            output = output * torch.tensor(self.config.hidden_size ** 0.5, dtype=output.dtype,
                                           device=output.device)
        if self._embedding_scale is not None:
            output = output * self._embedding_scale
        norm = getattr(self.embedding, "word_embeddings_layernorm", None)
        return output if norm is None else norm(output)

    def _logits_hook(self, module: torch.nn.Module, inputs: Any,
                     output: Tuple[torch.Tensor, Optional[torch.Tensor]]
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits, bias = output
        if self._logits_divisor is not None:
            logits = logits / self._logits_divisor
        cap = self._output_softcap
        return (logits, bias) if cap is None else (torch.tanh(logits / cap) * cap, bias)

    def _branch_hook(self, module: torch.nn.Module, inputs: Any,
                     output: Tuple[torch.Tensor, Optional[torch.Tensor]]
                     ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        out, bias = output
        scale = self._branch_scale
        return out * scale, None if bias is None else bias * scale

"""Which tensors tensor parallelism splits, and along which axis, read off the model itself.

The rules come from the modules megatron-core builds for the checkpoint's own flags: the
layer spec (modellink/models/layer_spec.py) names each submodule's class, and megatron-core
marks the parameters of its tensor-parallel classes with the axis they are split along
(`partition_dim`), read here off one tiny instance of each (ColumnParallelLinear and
VocabParallelEmbedding: rows; RowParallelLinear: the weight's columns, its bias whole);
every other module is held whole. Walking the spec builds none of the model's modules, so
this costs the same for a model of any size. A tensor whose module the model does not have
is an error rather than a guess.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding)
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.spec_utils import ModuleSpec, import_module
from megatron.core.transformer.transformer_config import TransformerConfig

from modellink.arguments import build_parser
from modellink.checkpoint.errors import ConversionError
from modellink.models.layer_spec import decoder_layer_spec, norm_spec
from modellink.models.moe import moe_layer_pattern
from modellink.ops.activations import gated_mlp

# A module's parameters -> the axis each is split along (None: whole); a module without
# tensor-parallel parameters holds every parameter whole.
Dims = Dict[str, Optional[int]]
_WHOLE: Dims = {}
# Layer and expert indices do not change a tensor's rule; experts sit under their MLP.
_INDEX = re.compile(r"(?<=layers\.)\d+(?=\.)")
_EXPERT = re.compile(r"local_experts\.\d+\.")


def _pattern(module: str) -> str:
    return _EXPERT.sub("", _INDEX.sub("*", module))


@dataclass(frozen=True)
class SplitRules:
    """A model's modules (layer indices as `*`, experts under their MLP) -> how tensor
    parallelism splits their parameters; `gated`: linear_fc1 holds [gate; up] halves."""
    modules: Dict[str, Dims]
    gated: bool

    def dim(self, name: str) -> Optional[int]:
        """The axis `name` is split along (None: every rank holds all of it)."""
        module, _, param = name.rpartition(".")
        dims = self.modules.get(_pattern(module))
        if dims is None or (dims and param not in dims):
            raise ConversionError(f"tensor {name}: the model these flags build has no such "
                                  f"parameter, so there is no tensor-parallel rule for it")
        return dims.get(param)

    def halves(self, name: str) -> bool:
        """Whether each rank's shard is [its gate rows; its up rows] (SwiGLU/GeGLU fc1)."""
        return self.gated and name.rpartition(".")[0].endswith("linear_fc1") \
            and self.dim(name) == 0


@functools.lru_cache(maxsize=None)
def _parallel_dims() -> Dict[type, Dims]:
    """How megatron-core marks the parameters of its tensor-parallel classes, read off one
    tiny CPU instance of each (with biases, so that both are seen)."""
    # An empty cuda_graph_scope: the default ("full") warns that it is deprecated.
    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=1,
                               use_cpu_initialization=True, cuda_graph_scope=[])
    init = torch.nn.init.zeros_
    made = {
        ColumnParallelLinear: ColumnParallelLinear(8, 8, config=config, init_method=init,
                                                   bias=True, gather_output=False),
        RowParallelLinear: RowParallelLinear(8, 8, config=config, init_method=init, bias=True,
                                             input_is_parallel=True, skip_bias_add=False),
        VocabParallelEmbedding: VocabParallelEmbedding(8, 8, init_method=init, config=config),
    }
    return {cls: {name: param.partition_dim if getattr(param, "tensor_model_parallel", False)
                  else None for name, param in module.named_parameters()}
            for cls, module in made.items()}


def _module_class(spec: Any) -> Optional[type]:
    """The nn.Module class a spec entry builds (None: a function, or a placeholder such as
    IdentityOp that holds no parameters)."""
    module = spec.module if isinstance(spec, ModuleSpec) else spec
    if isinstance(module, tuple):
        module = import_module(module)
    if isinstance(module, functools.partial):
        module = module.func
    if not isinstance(module, type) or not issubclass(module, torch.nn.Module) \
            or issubclass(module, (IdentityOp, IdentityFuncOp)):
        return None
    return module


def _dims(cls: type) -> Dims:
    return next((dims for base, dims in _parallel_dims().items() if issubclass(cls, base)),
                _WHOLE)


def _walk(spec: Any, path: str, out: Dict[str, str]) -> None:
    module = _module_class(spec)
    if module is None:
        return
    out[path] = _dims(module)
    submodules = spec.submodules if isinstance(spec, ModuleSpec) else None
    if dataclasses.is_dataclass(submodules):
        for field in dataclasses.fields(submodules):
            _walk(getattr(submodules, field.name), f"{path}.{field.name}", out)
    if issubclass(module, MoELayer):
        # MoELayer builds a TopKRouter (one weight, whole on every rank) when its spec names
        # none.
        out.setdefault(f"{path}.router", _WHOLE)


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The checkpoint's args with every flag it predates at its default, the spec built for
    CPU (the classes differ by device only in kernels, not in sharding) and experts as
    SequentialMLP, whose per-expert names the converter reads and writes."""
    # The parser's defaults; the two flags it requires take placeholders that args replace.
    full, _ = build_parser().parse_known_args(["--micro-batch-size", "1", "--lr", "0"])
    full.__dict__.update(vars(args))
    full.device = "cpu"
    full.moe_grouped_gemm = False
    return full


def split_rules(args: argparse.Namespace) -> SplitRules:
    """The rules of every tensor of the model `args` (a checkpoint's flags) builds."""
    args = _with_defaults(args)
    out: Dict[str, Dims] = {}
    # GPTModel's own modules: the vocabulary-parallel embedding and output layer.
    out["embedding.word_embeddings"] = _dims(VocabParallelEmbedding)
    out["output_layer"] = _dims(ColumnParallelLinear)
    if args.position_embedding_type == "learned_absolute":
        out["embedding.position_embeddings"] = _WHOLE
    _walk(norm_spec(args), "decoder.final_layernorm", out)
    if args.embed_layernorm:
        _walk(norm_spec(args), "embedding.word_embeddings_layernorm", out)
    kinds = {None} if args.num_experts is None else set(map(bool, moe_layer_pattern(args)))
    for moe in kinds:
        _walk(decoder_layer_spec(args, moe), "decoder.layers.*", out)
    return SplitRules(out, gated_mlp(args))

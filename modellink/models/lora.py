"""LoRA adapters on megatron-core's tensor-parallel linears, split the way the base layer is.

    y = base(x) + (alpha / r) * B(A(x))

ColumnParallelLinear (linear_qkv, linear_fc1): A [r, in] is replicated, B [out/tp, r] holds
the rank's output rows, so B's rows follow the base weight's own layout (query groups, SwiGLU
gate/up halves). RowParallelLinear (linear_proj, linear_fc2): A [r, in/tp] holds the rank's
input columns; its partial product is all-reduced (reduce-scattered along the sequence with
sequence parallelism) exactly as the base layer's output is, and B [out, r] is replicated.
Only rank-r activations cross ranks. With sequence parallelism a replicated matrix sees only
the rank's tokens, so it is marked `sequence_parallel` and megatron-core sums its gradient
over the tensor-parallel group, as it does for norm weights.

Why not peft: its LoraParallelLinear (peft/tuners/lora/tp_layer.py) applies the replicated
matrix as a plain nn.Linear without that mark, so with sequence parallelism every rank would
update it from its own tokens only and the replicas drift apart; and get_peft_model renames
every wrapped weight to `*.base_layer.weight`, which breaks Megatron-LM checkpoint names, the
converters and the layout-free initialisation. These layers subclass the base layer instead,
so base weights keep their names and adapters appear as ModelLink / MindSpeed-LLM (peft) name
them: `<linear>.lora_A.default.weight`, `<linear>.lora_B.default.weight`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import sys
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.transformer.mlp import MLPSubmodules, apply_swiglu_sharded_factory
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

LORA_A = "lora_A.default.weight"
LORA_B = "lora_B.default.weight"


def lora_enabled(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "lora_target_modules", None))


def _adapter(rows: int, cols: int, like: torch.Tensor) -> torch.nn.ModuleDict:
    # Zero until init_adapters() draws A: a freshly built layer is exactly its base layer.
    linear = torch.nn.Linear(cols, rows, bias=False, device=like.device, dtype=like.dtype)
    torch.nn.init.zeros_(linear.weight)
    return torch.nn.ModuleDict({"default": linear})


class _BaseAndDown(torch.autograd.Function):
    """--lora-fusion: the base projection and the adapter's A projection of the same input as
    one GEMM, x @ [W; A]^T, split into the base output and the rank-r activation. The backward
    is one GEMM for the input gradient, A's r-row weight gradient, and W's only when W is
    trained (autograd through torch.cat would compute the frozen W's full gradient too)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, down: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, weight, down)
        both = F.linear(x, torch.cat([weight, down]))
        return both[..., :weight.shape[0]], both[..., weight.shape[0]:]

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor, d_low: torch.Tensor
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        x, weight, down = ctx.saved_tensors
        d_both = torch.cat([d_out, d_low], dim=-1)
        d_x = torch.matmul(d_both, torch.cat([weight, down]))
        flat_x = x.reshape(-1, x.shape[-1])
        d_down = d_low.reshape(-1, d_low.shape[-1]).t().matmul(flat_x)
        d_weight = (d_out.reshape(-1, d_out.shape[-1]).t().matmul(flat_x)
                    if ctx.needs_input_grad[1] else None)
        return d_x, d_weight, d_down


class _Adapted:
    """What both adapter variants share; `lora_r` / `lora_alpha` / `lora_fusion` come from
    adapter_class()."""

    lora_r: int
    lora_alpha: int
    lora_fusion: bool
    lora_active = True  # adapters_disabled() turns it off: the layer is its base layer
    lora_A: torch.nn.ModuleDict
    lora_B: torch.nn.ModuleDict

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    def _mark_replicated(self, weight: torch.Tensor) -> None:
        set_tensor_model_parallel_attributes(weight, False, -1, 1)
        if self.sequence_parallel:
            weight.sequence_parallel = True

    def full_a_slice(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's part of a full-size A (drawn the same way at every layout)."""
        return full

    def _fused_forward(self, input_: torch.Tensor, weight: torch.Tensor
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """--lora-fusion on one tensor-parallel rank (validate_lora_args refuses more), where
        both base linears are plain x @ W^T with the bias added or handed back."""
        output, low = _BaseAndDown.apply(input_, weight, self.lora_A["default"].weight)
        output = output + F.linear(low, self.lora_B["default"].weight) * self.lora_scaling
        if self.skip_bias_add:
            return output, self.bias
        return (output if self.bias is None else output + self.bias), None

    def _sharded(self, prefix: str, sharded_offsets: tuple, metadata: Optional[dict],
                 axes: Dict[str, int]) -> Dict[str, Any]:
        state = self.state_dict(prefix="", keep_vars=True)
        return make_sharded_tensors_for_checkpoint(
            state, prefix, axes, sharded_offsets, tp_group=self.tp_group,
            dp_cp_group=(metadata or {}).get("dp_cp_group"))


class _ColumnAdapted(_Adapted):
    def __init__(self, input_size: int, output_size: int, **kwargs: Any) -> None:
        super().__init__(input_size, output_size, **kwargs)
        self.lora_A = _adapter(self.lora_r, input_size, self.weight)
        self.lora_B = _adapter(self.output_size_per_partition, self.lora_r, self.weight)
        self._mark_replicated(self.lora_A["default"].weight)
        set_tensor_model_parallel_attributes(self.lora_B["default"].weight, True, 0, 1)

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.lora_active:
            return super().forward(input_, weight, runtime_gather_output)
        if self.lora_fusion:
            return self._fused_forward(input_, self.weight if weight is None else weight)
        output, bias = super().forward(input_, weight, runtime_gather_output)
        low = F.linear(input_, self.lora_A["default"].weight)
        if self.sequence_parallel:  # backward: reduce-scatter, as the base layer's input
            low = gather_from_sequence_parallel_region(low, group=self.tp_group)
        else:  # backward: all-reduce of the input gradient, as the base layer's
            low = copy_to_tensor_model_parallel_region(low, group=self.tp_group)
        delta = F.linear(low, self.lora_B["default"].weight) * self.lora_scaling
        gather = self.gather_output if runtime_gather_output is None else runtime_gather_output
        if gather:
            delta = gather_from_tensor_model_parallel_region(delta, group=self.tp_group)
        return output + delta, bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None) -> Dict[str, Any]:
        sharded = self._sharded(prefix, sharded_offsets, metadata,
                                {"weight": 0, "bias": 0, LORA_B: 0})
        if getattr(self.weight, "partition_stride", 1) == 2:
            # SwiGLU fc1: B's rows are [gate shard; up shard] like the weight's (MLP's own
            # sharded_state_dict only rewrites the weight and bias keys).
            key = f"{prefix}{LORA_B}"
            sharded[key] = apply_swiglu_sharded_factory(sharded[key], sharded_offsets)
        return sharded


class _RowAdapted(_Adapted):
    def __init__(self, input_size: int, output_size: int, **kwargs: Any) -> None:
        super().__init__(input_size, output_size, **kwargs)
        self.lora_A = _adapter(self.lora_r, self.input_size_per_partition, self.weight)
        self.lora_B = _adapter(output_size, self.lora_r, self.weight)
        set_tensor_model_parallel_attributes(self.lora_A["default"].weight, True, 1, 1)
        self._mark_replicated(self.lora_B["default"].weight)

    def full_a_slice(self, full: torch.Tensor) -> torch.Tensor:
        rank = torch.distributed.get_rank(self.tp_group)
        width = self.input_size_per_partition
        return full[:, rank * width:(rank + 1) * width]

    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.lora_active:
            return super().forward(input_)
        if self.lora_fusion:
            return self._fused_forward(input_, self.weight)
        output, bias = super().forward(input_)
        local = input_ if self.input_is_parallel else \
            scatter_to_tensor_model_parallel_region(input_, group=self.tp_group)
        low = F.linear(local, self.lora_A["default"].weight)
        if self.sequence_parallel:
            low = reduce_scatter_to_sequence_parallel_region(low, group=self.tp_group)
        else:
            low = reduce_from_tensor_model_parallel_region(low, group=self.tp_group)
        return output + F.linear(low, self.lora_B["default"].weight) * self.lora_scaling, bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: Optional[dict] = None) -> Dict[str, Any]:
        return self._sharded(prefix, sharded_offsets, metadata, {"weight": 1, LORA_A: 1})


@contextlib.contextmanager
def adapters_disabled(module: torch.nn.Module) -> Iterator[None]:
    """The base model inside `module` (DPO's reference with LoRA: no second copy in memory)."""
    layers = [layer for layer in module.modules() if isinstance(layer, _Adapted)]
    for layer in layers:
        layer.lora_active = False
    try:
        yield
    finally:
        for layer in layers:
            layer.lora_active = True


@functools.lru_cache(maxsize=None)
def adapter_class(base: type, r: int, alpha: int, fusion: bool = False) -> type:
    """`base` (ColumnParallelLinear, RowParallelLinear or a subclass such as the MC2 linears)
    with LoRA adapters of rank r; a class, as attention builds linear_qkv by calling it.
    `fusion` (--lora-fusion) computes base and A projections in one GEMM."""
    if issubclass(base, ColumnParallelLinear):
        mixin: type = _ColumnAdapted
    elif issubclass(base, RowParallelLinear):
        mixin = _RowAdapted
    else:
        raise ValueError(f"LoRA wraps megatron-core parallel linears, not {base.__name__}")
    return type(f"Lora{base.__name__}", (mixin, base),
                {"lora_r": r, "lora_alpha": alpha, "lora_fusion": fusion})


def _adapt(spec: ModuleSpec, targets: List[str], r: int, alpha: int, fusion: bool
           ) -> ModuleSpec:
    submodules = spec.submodules
    changes = {name: adapter_class(getattr(submodules, name), r, alpha, fusion)
               for name in targets if hasattr(submodules, name)}
    return dataclasses.replace(spec, submodules=dataclasses.replace(submodules, **changes))


def with_adapters(layer: ModuleSpec, args: argparse.Namespace) -> ModuleSpec:
    """The decoder layer spec with --lora-target-modules wrapped (unchanged without LoRA)."""
    if not lora_enabled(args):
        return layer
    adapters = (args.lora_target_modules, args.lora_r, args.lora_alpha, args.lora_fusion)
    submodules = layer.submodules
    mlp = submodules.mlp
    if isinstance(mlp.submodules, MLPSubmodules):  # MoE experts: refused by the flag checks
        mlp = _adapt(mlp, *adapters)
    return dataclasses.replace(layer, submodules=dataclasses.replace(
        submodules, self_attention=_adapt(submodules.self_attention, *adapters), mlp=mlp))


def is_trainable(name: str, modules_to_save: Optional[List[str]]) -> bool:
    """Adapters and --lora-modules-to-save are trained (and saved); the rest is frozen."""
    if name.endswith("_extra_state"):
        return False
    if ".lora_A." in name or ".lora_B." in name:
        return True
    return any(module in name.split(".")[:-1] for module in modules_to_save or ())


@torch.no_grad()
def init_adapters(chunks: List[torch.nn.Module], seed: int) -> None:
    """Draw every A from (seed, global layer, module name) over its full shape, so each layout
    starts from the same adapters; B stays zero, so step 0 is the base model. The range is
    peft's default (kaiming-uniform with a=sqrt(5): +-1/sqrt(fan_in))."""
    for chunk in chunks:
        for layer in chunk.decoder.layers:
            for name, module in layer.named_modules():
                if not isinstance(module, _Adapted):
                    continue
                generator = torch.Generator().manual_seed(
                    zlib.crc32(f"{seed}:lora:{layer.layer_number}:{name}".encode()))
                bound = 1.0 / math.sqrt(module.input_size)
                full = torch.empty(module.lora_r, module.input_size)
                full.uniform_(-bound, bound, generator=generator)
                a = module.lora_A["default"].weight
                a.copy_(module.full_a_slice(full).to(a.dtype))
                torch.nn.init.zeros_(module.lora_B["default"].weight)


def _output_requires_grad(module: torch.nn.Module, inputs: Any, output: Any) -> None:
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        output.requires_grad_(True)


def register_grad_hooks(chunks: List[torch.nn.Module], names: List[str]) -> int:
    """--lora-register-forward-hook: the outputs of the modules so named (the last part of the
    module path) require grad. With --recompute-granularity full a recomputed block is an
    autograd function of its input tensor alone; fed by frozen embeddings its output would
    not require grad and the adapters inside would get none. Returns the hooks registered."""
    count = 0
    for chunk in chunks:
        for name, module in chunk.named_modules():
            if name.split(".")[-1] in names:
                module.register_forward_hook(_output_requires_grad)
                count += 1
    return count


def prepare_for_training(chunks: List[torch.nn.Module], args: argparse.Namespace) -> None:
    """Initialise the adapters and freeze everything that is not trained; as ModelLink, the
    --lora-register-forward-hook modules get their hooks when whole layers are recomputed."""
    init_adapters(chunks, args.seed)
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            param.requires_grad_(is_trainable(name, args.lora_modules_to_save))
    if args.recompute_granularity == "full":
        register_grad_hooks(chunks, args.lora_register_forward_hook)


def saved_weights(module: torch.nn.Module, args: argparse.Namespace) -> Dict[str, Any]:
    """The model entry of a checkpoint: with LoRA, only the trained weights."""
    state = module.state_dict_for_save_checkpoint()
    if not lora_enabled(args):
        return state
    return {k: v for k, v in state.items() if is_trainable(k, args.lora_modules_to_save)}


def load_weights(module: torch.nn.Module, state: Dict[str, Any], part: str,
                 args: argparse.Namespace) -> None:
    """part "all": a whole model, strictly unless --load-checkpoint-loosely (then the weights
    that fit are loaded and the rest is named on stderr, as ModelLink's strict=False); "base":
    a model without adapters (a pretrained or converted checkpoint); "adapters": what
    saved_weights() kept. Raises RuntimeError naming the keys that do not fit."""
    loosely = part == "all" and args.load_checkpoint_loosely
    if part == "all" and not loosely:
        module.load_state_dict(state, strict=True)
        return
    if isinstance(module, Float16Module):  # its load_state_dict returns nothing
        module = module.module
    result = module.load_state_dict(state, strict=False)
    modules_to_save = args.lora_modules_to_save
    if loosely:
        for kind, keys in (("missing", result.missing_keys),
                           ("unexpected", result.unexpected_keys)):
            if keys:
                print(f"WARNING: --load-checkpoint-loosely: {len(keys)} {kind} weight(s) left "
                      f"as they were: {', '.join(keys)}", file=sys.stderr, flush=True)
        return
    if part == "base":
        missing = [k for k in result.missing_keys if ".lora_A." not in k and ".lora_B." not in k]
    else:
        missing = [k for k in result.missing_keys if is_trainable(k, modules_to_save)]
    problems = [f"missing {k}" for k in missing] + [f"unexpected {k}"
                                                     for k in result.unexpected_keys]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise RuntimeError(f"{'; '.join(problems[:3])}{more}")

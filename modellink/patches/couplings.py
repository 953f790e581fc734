"""What modellink relies on in megatron-core beyond patches and its public API.

Three kinds: private functions and methods we call (`PRIVATE_CALLS`), classes we subclass,
whose overridden methods megatron-core calls with its own arguments (`SUBCLASSES`), and file
formats we write or rebuild byte for byte so that megatron-core reads them (`FORMATS`).
`python -m modellink.patches` lists them with the patches; tests/test_patch_targets.py checks
every one against the installed megatron-core, so that an upgrade is a test run.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, List, Tuple

from modellink.patches.registry import missing_params, resolve

_OPTIMIZER = "megatron.core.optimizer.distrib_optimizer.DistributedOptimizer"
_INDEXED = "megatron.core.datasets.indexed_dataset"


@dataclass(frozen=True)
class PrivateCall:
    target: str
    params: Tuple[str, ...]  # the parameters we pass
    caller: str


@dataclass(frozen=True)
class Format:
    name: str
    upstream: Tuple[str, ...]  # the code that writes or reads it
    ours: str
    coupling: str


PRIVATE_CALLS = [
    PrivateCall("megatron.core.models.common.embeddings.rope_utils._apply_rotary_pos_emb_bshd",
                ("t", "freqs", "mscale"), "modellink/ops/rotary.py"),
    PrivateCall("megatron.core.models.common.embeddings.yarn_rotary_pos_embedding."
                "_yarn_get_concentration_factor_from_config", ("config",),
                "modellink/ops/rotary_attention.py"),
    PrivateCall(f"{_OPTIMIZER}._get_main_param_and_optimizer_states", ("self", "model_param"),
                "modellink/training/checkpoint/optimizer_shards.py"),
    PrivateCall(f"{_OPTIMIZER}._copy_main_params_to_model_params", ("self",),
                "modellink/training/ha/replica.py"),
    PrivateCall(f"{_INDEXED}._IndexWriter", ("idx_path", "dtype"), "modellink/data/writer.py"),
    PrivateCall("megatron.core.datasets.megatron_dataset.MegatronDataset._key_config_attributes",
                (), "modellink/training/data/instruction_data.py"),
    PrivateCall("megatron.core.datasets.gpt_dataset.GPTDataset._key_config_attributes", (),
                "modellink/training/data/datasets.py"),
]

SUBCLASSES = [
    "modellink.data.writer._IndexWriterNumpy",
    "modellink.models.balance_losses.DeviceBalancedRouter",
    "modellink.models.decoding_layer.DecodingTransformerLayer",
    "modellink.models.gpt.YarnTransformerConfig",
    "modellink.models.gpt_model.ModelLinkGPTModel",
    "modellink.models.group_routing.BestExpertGroups",
    "modellink.models.group_routing.GroupLimitedRouter",
    "modellink.models.layer_spec.DenseBiasRowParallelLinear",
    "modellink.models.layer_spec._ModelLinkSpecProvider",
    "modellink.models.sandwich_layer.SandwichLayerSubmodules",
    "modellink.models.sandwich_layer.SandwichNormLayer",
    "modellink.ops.attention.FlashSelfAttention",
    "modellink.ops.mc2.MC2ColumnParallelLinear",
    "modellink.ops.mc2.MC2RowParallelLinear",
    "modellink.ops.mlp.ActivationMLP",
    "modellink.ops.rotary_attention.RotarySelfAttention",
    "modellink.training.data.datasets._IndexKeyedConfig",
    "modellink.training.data.datasets.IndexKeyedGPTDataset",
    "modellink.training.data.instruction_data.InstructionDatasetConfig",
    "modellink.training.data.instruction_data.InstructionDataset",
]

FORMATS = [
    Format("distributed-optimizer state (distrib_optim.pt)",
           (f"{_OPTIMIZER}.get_parameter_state_dp_zero",
            f"{_OPTIMIZER}.load_parameter_state_from_dp_zero"),
           "modellink/training/checkpoint/optimizer_shards.py",
           "rebuilt from per-rank shards without a collective; the same bytes as the gather"),
    Format("indexed dataset index (.idx)", (f"{_INDEXED}._IndexWriter.write",
                                            f"{_INDEXED}._IndexReader"),
           "modellink/data/writer.py",
           "sequence pointers computed by numpy instead of _IndexWriter's loop, byte for byte"),
    Format("model-parallel RNG state in checkpoints",
           ("megatron.core.tensor_parallel.random.CudaRNGStatesTracker.get_states",
            "megatron.core.tensor_parallel.random.CudaRNGStatesTracker.set_states"),
           "modellink/training/checkpoint/checkpointing.py",
           "the tracker's states are saved as Megatron-LM saves them, so its checkpoints load"),
]


def _upstream(cls: type) -> bool:
    return cls.__module__.startswith("megatron.")


def overrides(path: str) -> List[Tuple[str, str]]:
    """(method, upstream class that defines it) for each method `path`'s class overrides."""
    cls = resolve(path)
    found = []
    for name, value in vars(cls).items():
        if name.startswith("__") and name != "__init__" or not callable(value):
            continue
        owner = next((base for base in cls.__mro__[1:] if _upstream(base) and name in vars(base)),
                     None)
        if owner is not None:
            found.append((name, f"{owner.__module__}.{owner.__qualname__}"))
    return found


def _accepts(ours: Any, theirs: Any) -> List[str]:
    """The parameters of upstream's `theirs` that our override `ours` cannot be called with."""
    try:
        ours_params = inspect.signature(ours).parameters.values()
        theirs_params = inspect.signature(theirs).parameters
    except (TypeError, ValueError):
        return []
    kinds = {p.kind for p in ours_params}
    if inspect.Parameter.VAR_KEYWORD in kinds:
        return []
    names = {p.name for p in ours_params}
    return [f"takes no parameter {name!r}" for name, p in theirs_params.items()
            if name not in names and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def problems() -> List[str]:
    """Every coupling the installed megatron-core no longer meets."""
    found = []
    for call in PRIVATE_CALLS:
        found += _check(call.target, call.params)
    for fmt in FORMATS:
        for target in fmt.upstream:
            found += _check(target, ())
    for path in SUBCLASSES:
        try:
            cls = resolve(path)
            for name, owner in overrides(path):
                found += [f"{path}.{name} overrides {owner}.{name}, which {problem}"
                          for problem in _accepts(vars(cls)[name], getattr(resolve(owner), name))]
        except Exception as exc:
            found.append(f"{path}: {exc}")
    return found


def _check(target: str, params: Tuple[str, ...]) -> List[str]:
    try:
        return [f"{target}: {problem}" for problem in missing_params(resolve(target), params)]
    except Exception as exc:
        return [f"{target}: {exc}"]

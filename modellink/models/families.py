"""Per-family model settings as data: the training flags a Hugging Face config implies.

Each family names the HF `model_type`s it accepts, the HF class and config class it writes
back, the flags every checkpoint of the family implies, and which HF config fields map onto
which Megatron flags. `training_flags()` turns a config.json into the flags `pretrain_gpt.py`
needs to build the same model; `hf_config_from_args()` goes the other way for export.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple


class FamilyConfigError(ValueError):
    """A config.json this family cannot express in Megatron flags."""


@dataclass(frozen=True)
class Field:
    """One HF config attribute <-> one Megatron args attribute (and its flag)."""
    hf: str
    arg: str
    flag: str
    cast: Callable[[Any], Any] = int


_LLAMA_FIELDS = (
    Field("num_hidden_layers", "num_layers", "--num-layers"),
    Field("hidden_size", "hidden_size", "--hidden-size"),
    Field("intermediate_size", "ffn_hidden_size", "--ffn-hidden-size"),
    Field("num_attention_heads", "num_attention_heads", "--num-attention-heads"),
    Field("max_position_embeddings", "max_position_embeddings", "--max-position-embeddings"),
    Field("rms_norm_eps", "norm_epsilon", "--norm-epsilon", float),
)
_LLAMA_FLAGS = ("--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
                "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0")


@dataclass(frozen=True)
class FamilySettings:
    name: str
    model_types: Tuple[str, ...]
    architecture: str
    config_class: str
    fields: Tuple[Field, ...] = _LLAMA_FIELDS
    fixed_flags: Tuple[str, ...] = _LLAMA_FLAGS
    qkv_bias: bool = False
    moe: bool = False
    # HF config values this family's Megatron model cannot represent: attribute -> allowed.
    required: Dict[str, Any] = field(default_factory=dict)


_LLAMA_REQUIRED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}

FAMILIES: Dict[str, FamilySettings] = {
    settings.name: settings for settings in (
        # LLaMA 1/2/3, CodeLlama, Yi and Aquila all ship LlamaForCausalLM checkpoints.
        FamilySettings("llama2", ("llama",), "LlamaForCausalLM", "LlamaConfig",
                       required=_LLAMA_REQUIRED),
        FamilySettings("mistral", ("mistral",), "MistralForCausalLM", "MistralConfig",
                       required={"hidden_act": "silu"}),
        FamilySettings("qwen", ("qwen2",), "Qwen2ForCausalLM", "Qwen2Config", qkv_bias=True,
                       required={"hidden_act": "silu", "use_sliding_window": False}),
        FamilySettings("mixtral", ("mixtral",), "MixtralForCausalLM", "MixtralConfig", moe=True,
                       required={"hidden_act": "silu"}),
    )
}


def get_family(name: str) -> FamilySettings:
    if name not in FAMILIES:
        raise FamilyConfigError(f"unknown --model-type-hf {name!r}; choose from "
                                f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def rope_theta(config: Dict[str, Any]) -> float:
    """transformers 5 keeps rope settings in `rope_parameters`; older configs at top level."""
    params = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise FamilyConfigError(f"config.json uses rope type {rope_type!r}; only plain RoPE "
                                f"(no scaling) is supported")
    return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def check_config(settings: FamilySettings, config: Dict[str, Any]) -> None:
    """Refuse configs whose model the family's Megatron flags would not reproduce."""
    model_type = config.get("model_type")
    if model_type not in settings.model_types:
        matches = [f.name for f in FAMILIES.values() if model_type in f.model_types]
        hint = f"; use --model-type-hf {matches[0]}" if matches else ""
        raise FamilyConfigError(f"--model-type-hf {settings.name} does not match config.json "
                                f"model_type {model_type!r}{hint}")
    for attr, allowed in settings.required.items():
        if config.get(attr, allowed) != allowed:
            raise FamilyConfigError(f"config.json {attr}={config[attr]!r} is not supported for "
                                    f"{settings.name} (needs {allowed!r})")
    rope_theta(config)


def head_dim(config: Dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def query_groups(config: Dict[str, Any]) -> int:
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def training_flags(settings: FamilySettings, config: Dict[str, Any]) -> List[str]:
    """The model-shape flags for `pretrain_gpt.py` that rebuild this HF model."""
    check_config(settings, config)
    flags = list(settings.fixed_flags)
    for f in settings.fields:
        flags += [f.flag, str(f.cast(config[f.hf]))]
    flags += ["--seq-length", str(config["max_position_embeddings"]),
              "--rotary-base", str(int(rope_theta(config))),
              "--kv-channels", str(head_dim(config))]
    groups, heads = query_groups(config), config["num_attention_heads"]
    if groups != heads:
        flags += ["--group-query-attention", "--num-query-groups", str(groups)]
    if not config.get("tie_word_embeddings", False):
        flags.append("--untie-embeddings-and-output-weights")
    if settings.qkv_bias:
        flags.append("--add-qkv-bias")
    if settings.moe:
        flags += ["--num-experts", str(config["num_local_experts"]),
                  "--moe-router-topk", str(config["num_experts_per_tok"])]
    return flags


def hf_config_from_args(settings: FamilySettings, args: argparse.Namespace, vocab_size: int,
                        base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """config.json for a Megatron model; `base` (the config it came from) keeps the rest."""
    check_args(settings, args)
    config = dict(base or {})
    for f in settings.fields:
        config[f.hf] = f.cast(getattr(args, f.arg))
    heads = args.num_attention_heads
    config.update(
        model_type=settings.model_types[0],
        architectures=[settings.architecture],
        vocab_size=vocab_size,
        num_key_value_heads=args.num_query_groups if args.group_query_attention else heads,
        head_dim=args.kv_channels or args.hidden_size // heads,
        tie_word_embeddings=not args.untie_embeddings_and_output_weights,
        rope_parameters={"rope_type": "default", "rope_theta": float(args.rotary_base)},
        hidden_act="silu",
    )
    config.pop("rope_theta", None)
    config.pop("rope_scaling", None)
    if settings.moe:
        config.update(num_local_experts=args.num_experts,
                      num_experts_per_tok=args.moe_router_topk)
    return config


def check_args(settings: FamilySettings, args: argparse.Namespace) -> None:
    """A Megatron checkpoint's flags must describe a model of this family."""
    expected = {"normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
                "add_bias_linear": False, "add_qkv_bias": settings.qkv_bias}
    for attr, value in expected.items():
        if getattr(args, attr, None) != value:
            raise FamilyConfigError(f"the checkpoint was trained with "
                                    f"{attr}={getattr(args, attr, None)!r}, but "
                                    f"--model-type-hf {settings.name} needs {value!r}")
    if settings.moe != (getattr(args, "num_experts", None) is not None):
        raise FamilyConfigError(f"--model-type-hf {settings.name} "
                                f"{'needs' if settings.moe else 'cannot hold'} an MoE checkpoint "
                                f"(--num-experts)")

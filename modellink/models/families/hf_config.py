"""A family's settings applied: config.json <-> the flags `pretrain_gpt.py` builds the model with.

`training_flags()` turns a config.json into the flags that rebuild the same model;
`hf_config_from_args()` goes the other way for export, and `check_args()` refuses a Megatron
checkpoint whose flags the family's config.json cannot hold. The code is shared by every
family; what differs between them is the data of base.FamilySettings.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from modellink.models.config_dialects import set_llama_value, strip_llama_keys, to_llama_keys
from modellink.models.families.base import MOE_SWITCHES, FamilyConfigError, FamilySettings
from modellink.models.families.common import rope_settings
from modellink.models.families.registry import FAMILIES
from modellink.models.feature_args import SWITCHES, VALUED


def variant_for_config(settings: FamilySettings, config: Dict[str, Any]) -> FamilySettings:
    """The family's settings for the model this config.json describes."""
    variant = settings.variant
    return variant.settings if variant is not None and variant.in_config(config) else settings


def variant_for_args(settings: FamilySettings, args: argparse.Namespace,
                     base: Optional[Dict[str, Any]] = None) -> FamilySettings:
    """The family's settings for the model a Megatron checkpoint's flags describe; `base` is
    the config.json it came from or is written beside, if known."""
    variant = settings.variant
    return (variant.settings if variant is not None and variant.in_checkpoint(args, base)
            else settings)


def rope_theta(config: Dict[str, Any], allowed: Tuple[str, ...] = ("default",)) -> float:
    rope_type = rope_settings(config)["rope_type"]
    if rope_type not in allowed:
        raise FamilyConfigError(f"config.json uses rope type {rope_type!r}; this family "
                                f"supports {', '.join(allowed)}")
    return float(rope_settings(config)["rope_theta"])


# --rope-scaling-type llama3's flags <-> rope_parameters' keys.
_LLAMA3_SCALING = (("--rope-scaling-factor", "rope_scaling_factor", "factor", float),
                   ("--low-freq-factor", "low_freq_factor", "low_freq_factor", float),
                   ("--high-freq-factor", "high_freq_factor", "high_freq_factor", float),
                   ("--original-max-position-embeddings", "original_max_position_embeddings",
                    "original_max_position_embeddings", int))


# --rope-scaling-type yarn's (DeepSeek-V2's) flags <-> rope_parameters' keys.
_YARN_SCALING = (("--rope-scaling-factor", "rope_scaling_factor", "factor", float),
                 ("--original-max-position-embeddings", "original_max_position_embeddings",
                  "original_max_position_embeddings", int),
                 ("--rope-scaling-beta-fast", "rope_scaling_beta_fast", "beta_fast", int),
                 ("--rope-scaling-beta-slow", "rope_scaling_beta_slow", "beta_slow", int),
                 ("--rope-scaling-mscale", "rope_scaling_mscale", "mscale", float),
                 ("--rope-scaling-mscale-all-dim", "rope_scaling_mscale_all_dim",
                  "mscale_all_dim", float))
_SCALINGS = {"llama3": _LLAMA3_SCALING, "yarn": _YARN_SCALING}


def _rope_scaling_flags(config: Dict[str, Any]) -> List[str]:
    params = rope_settings(config)
    kind = params["rope_type"]
    if kind not in _SCALINGS:
        return []
    flags = ["--rope-scaling-type", kind]
    for flag, _, key, cast in _SCALINGS[kind]:
        if key not in params:
            raise FamilyConfigError(f"config.json rope_scaling ({kind}) has no {key}")
        flags += [flag, str(cast(params[key]))]
    return flags


def _rope_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    params = {"rope_type": args.rope_scaling_type or "default",
              "rope_theta": float(args.rotary_base)}
    if args.rope_scaling_type in _SCALINGS:
        params.update({key: cast(getattr(args, attr))
                       for _, attr, key, cast in _SCALINGS[args.rope_scaling_type]})
    return params


def _owns(settings: FamilySettings, config: Dict[str, Any]) -> bool:
    return config.get("model_type") in settings.model_types and (
        settings.claims is None or settings.claims(config))


def check_config(settings: FamilySettings, config: Dict[str, Any]) -> None:
    """Refuse configs whose model the family's Megatron flags would not reproduce."""
    model_type = config.get("model_type")
    if not _owns(settings, config):
        matches = [name for name, family in FAMILIES.items() if _owns(family.settings, config)]
        # A family that claims the config is its own before the one that takes any of them.
        matches.sort(key=lambda name: FAMILIES[name].settings.claims is None)
        hint = f"; use --model-type-hf {matches[0]}" if matches else ""
        if model_type in settings.model_types:
            raise FamilyConfigError(f"--model-type-hf {settings.name} does not claim this "
                                    f"model_type {model_type!r} config.json (families sharing "
                                    f"a model_type each claim their own){hint}")
        raise FamilyConfigError(f"--model-type-hf {settings.name} does not match config.json "
                                f"model_type {model_type!r}{hint}")
    for attr, allowed in settings.required.items():
        options = allowed if isinstance(allowed, tuple) else (allowed,)  # a tuple: any of them
        if config.get(attr, options[0]) not in options:
            raise FamilyConfigError(f"config.json {attr}={config[attr]!r} is not supported for "
                                    f"{settings.name} (needs {allowed!r})")
    if settings.layer_pattern and config.get("layer_types") is not None:
        if config["layer_types"] != _layer_types(settings, config["num_hidden_layers"]):
            raise FamilyConfigError(f"config.json layer_types is not supported for "
                                    f"{settings.name}: the layers must repeat "
                                    f"{list(settings.layer_pattern)}")
    for key, why in settings.required_keys.items():
        if key not in config:
            raise FamilyConfigError(f"config.json has no {key}: {why}")
    rope_theta(config, settings.rope_types + settings.rope_scalings)


def canonical_config(settings: FamilySettings, config: Dict[str, Any]) -> Dict[str, Any]:
    """config.json with the llama-style keys this module reads (see config_dialects.py) and the
    values transformers assumes for keys it leaves out."""
    config = {**settings.defaults, **config}
    return config if settings.dialect is None else to_llama_keys(settings.dialect, config)


def _layer_types(settings: FamilySettings, num_layers: int) -> List[str]:
    pattern = settings.layer_pattern
    return [pattern[i % len(pattern)] for i in range(num_layers)]


def _rope(settings: FamilySettings) -> bool:
    return settings.checked_args["position_embedding_type"] == "rope"


def head_dim(config: Dict[str, Any]) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def num_experts(settings: FamilySettings, config: Dict[str, Any]) -> Optional[int]:
    """The routed experts per layer (None: a dense family)."""
    if not settings.moe:
        return None
    return next(config[f.hf] for f in settings.moe_fields if f.arg == "num_experts")


def ffn_hidden_size(settings: FamilySettings, config: Dict[str, Any]) -> int:
    """Megatron's --ffn-hidden-size of a config.json in canonical keys (Qwen-1's
    intermediate_size is twice it; Bloom's has no such field, its MLP 4 x hidden)."""
    field = next((f for f in settings.fields if f.arg == "ffn_hidden_size"), None)
    return int(field.to_flag(config[field.hf])) if field else int(config["intermediate_size"])


def seq_length(settings: FamilySettings, config: Dict[str, Any]) -> int:
    """The --seq-length a config.json (canonical keys) implies."""
    own = settings.dialect.seq_length if settings.dialect is not None else None
    if own is not None:
        return int(config[own])
    return int(config.get("max_position_embeddings", settings.seq_length))


def query_groups(config: Dict[str, Any]) -> int:
    return config.get("num_key_value_heads") or config["num_attention_heads"]


def training_flags(settings: FamilySettings, config: Dict[str, Any]) -> List[str]:
    """The model-shape flags for `pretrain_gpt.py` that rebuild this HF model."""
    check_config(settings, config)
    config = canonical_config(settings, config)
    flags = list(settings.fixed_flags) + ["--" + f.replace("_", "-") for f in settings.features]
    for f in settings.fields:
        flags += [f.flag, f.to_flag(config[f.hf])]
    for f in settings.optional_fields:
        if config.get(f.hf) is not None:
            flags += [f.flag, f.to_flag(config[f.hf])]
    flags += ["--seq-length", str(seq_length(settings, config)),
              "--kv-channels", str(head_dim(config))]
    if _rope(settings):
        flags += ["--rotary-base",
                  str(int(rope_theta(config, settings.rope_types + settings.rope_scalings)))]
        flags += _rope_scaling_flags(config)
    if settings.qk_layernorm:
        flags.append("--qk-layernorm")
    if settings.rotary_percent != 1.0:
        flags += ["--rotary-percent", str(settings.rotary_percent)]
    if settings.rotary_interleaved:
        flags.append("--rotary-interleaved")
    groups, heads = query_groups(config), config["num_attention_heads"]
    if groups != heads:
        flags += ["--group-query-attention", "--num-query-groups", str(groups)]
    if not config.get("tie_word_embeddings", False):
        flags.append("--untie-embeddings-and-output-weights")
    if settings.qkv_bias:
        flags.append("--add-qkv-bias")
    if settings.dense_bias:
        flags.append("--add-dense-bias")
    if settings.moe:
        for f in settings.moe_fields:
            flags += [f.flag, f.to_flag(config[f.hf])]
        flags += ["--" + switch.replace("_", "-") for switch in settings.moe_switches]
    return flags


def hf_config_from_args(settings: FamilySettings, args: argparse.Namespace, vocab_size: int,
                        base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """config.json for a Megatron model; `base` (the config it came from) keeps the rest."""
    if settings.dialect is not None:
        return _dialect_config_from_args(settings, args, vocab_size, base)
    check_args(settings, args)
    config = dict(base or {})
    for f in settings.fields:
        config[f.hf] = f.to_hf(getattr(args, f.arg))
    for f in settings.optional_fields:
        value = getattr(args, f.arg, None)
        if value is None:
            config[f.hf] = config[f.off_as] if f.off_as else None
        else:
            config[f.hf] = f.to_hf(value)
    if settings.layer_pattern:
        config["layer_types"] = _layer_types(settings, args.num_layers)
    heads = args.num_attention_heads
    dim = args.kv_channels or args.hidden_size // heads
    # Written where the config.json had it or the classes' default (hidden / heads) is wrong,
    # so that a config.json comes back as it was.
    if config.get("head_dim") is not None or dim != args.hidden_size // heads:
        config["head_dim"] = dim
    config.update(
        model_type=settings.model_types[0],
        architectures=[settings.architecture],
        vocab_size=vocab_size,
        num_key_value_heads=args.num_query_groups if args.group_query_attention else heads,
        tie_word_embeddings=not args.untie_embeddings_and_output_weights,
        rope_parameters=_rope_parameters(args),
        # The values the family requires (the first where several are accepted).
        **{attr: allowed[0] if isinstance(allowed, tuple) else allowed
           for attr, allowed in settings.required.items()},
    )
    config.pop("rope_theta", None)
    config.pop("rope_scaling", None)
    if settings.moe:
        config.update({f.hf: f.to_hf(getattr(args, f.arg)) for f in settings.moe_fields})
    return config


def _dialect_config_from_args(settings: FamilySettings, args: argparse.Namespace,
                              vocab_size: int, base: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The family's own config.json; a setting its config.json cannot hold must be the value
    the family fixes (Baichuan2: no GQA, RoPE base 10000), or this is a FamilyConfigError."""
    check_args(settings, args)
    dialect = settings.dialect
    own = base is not None and base.get("model_type") in settings.model_types
    config = strip_llama_keys(dialect, base) if own else dict(dialect.template)
    heads = args.num_attention_heads
    values = {f.hf: f.to_hf(getattr(args, f.arg)) for f in settings.fields}
    values.update(vocab_size=vocab_size, head_dim=args.kv_channels or args.hidden_size // heads,
                  num_key_value_heads=args.num_query_groups if args.group_query_attention
                  else heads, tie_word_embeddings=not args.untie_embeddings_and_output_weights,
                  rope_theta=float(args.rotary_base))
    for key, value in values.items():
        set_llama_value(dialect, config, key, value)
    # Kept from the config.json the checkpoint came from: training at a shorter --seq-length
    # does not move where the HF model's long-context corrections start.
    if dialect.seq_length is not None and config.get(dialect.seq_length) is None:
        config[dialect.seq_length] = args.seq_length
    implied = canonical_config(settings, config)
    readers = {"head_dim": head_dim, "num_key_value_heads": query_groups,
               "rope_theta": lambda c: rope_theta(c, settings.rope_types),
               "tie_word_embeddings": lambda c: bool(c.get("tie_word_embeddings", False))}
    for key, value in values.items():
        held = readers[key](implied) if key in readers else implied.get(key)
        if held != value:
            raise FamilyConfigError(f"--model-type-hf {settings.name}: its config.json cannot "
                                    f"hold {key}={value!r} (the family fixes {held!r})")
    return config


def check_args(settings: FamilySettings, args: argparse.Namespace) -> None:
    """A Megatron checkpoint's flags must describe a model of this family."""
    expected = {**settings.checked_args, "add_qkv_bias": settings.qkv_bias,
                "rotary_percent": settings.rotary_percent}
    # Checkpoints written before a feature flag existed were built without it.
    expected.update({attr: attr in settings.features for attr in SWITCHES})
    held_fields = {f.arg for f in settings.fields + settings.optional_fields}
    expected.update({attr: None for attr in VALUED if attr not in held_fields})
    # A feature value config.json always holds (MiniCPM's scales) must have been trained with.
    for f in settings.fields:
        if f.arg in VALUED and getattr(args, f.arg, None) is None:
            raise FamilyConfigError(f"the checkpoint was trained without {f.flag}, which "
                                    f"--model-type-hf {settings.name}'s config.json needs")
    for attr, value in expected.items():
        held = getattr(args, attr, False if attr in SWITCHES else None)
        if held != value:
            raise FamilyConfigError(f"the checkpoint was trained with {attr}={held!r}, but "
                                    f"--model-type-hf {settings.name} needs {value!r}")
    # Checkpoints written before these switches existed have them off (RoPE over halves, no
    # dense bias, no query/key norms).
    for attr, flag, needed in (("rotary_interleaved", "--rotary-interleaved",
                                settings.rotary_interleaved),
                               ("add_dense_bias", "--add-dense-bias", settings.dense_bias),
                               ("qk_layernorm", "--qk-layernorm", settings.qk_layernorm)):
        if getattr(args, attr, False) != needed:
            raise FamilyConfigError(f"the checkpoint was trained "
                                    f"{'without' if needed else 'with'} {flag}, but "
                                    f"--model-type-hf {settings.name} "
                                    f"{'needs' if needed else 'cannot hold'} it")
    scaling = getattr(args, "rope_scaling_type", None)
    if scaling is not None and scaling not in settings.rope_scalings:
        raise FamilyConfigError(f"the checkpoint was trained with --rope-scaling-type {scaling}, "
                                f"which --model-type-hf {settings.name}'s config.json cannot hold")
    # --interleave-sliding-window sets sliding_window too; its own field is checked above.
    window = (getattr(args, "sliding_window", None)
              if getattr(args, "interleave_sliding_window", None) is None else None)
    if window is not None and "sliding_window" not in {f.arg for f in settings.optional_fields}:
        raise FamilyConfigError(f"the checkpoint was trained with --sliding-window {window}, "
                                f"which --model-type-hf {settings.name}'s config.json cannot hold")
    if settings.moe != (getattr(args, "num_experts", None) is not None):
        raise FamilyConfigError(f"--model-type-hf {settings.name} "
                                f"{'needs' if settings.moe else 'cannot hold'} an MoE checkpoint "
                                f"(--num-experts)")
    if settings.moe:
        _check_moe_args(settings, args)


def _check_moe_args(settings: FamilySettings, args: argparse.Namespace) -> None:
    # Checkpoints written before a switch existed were built without it.
    for switch in MOE_SWITCHES:
        if getattr(args, switch, False) != (switch in settings.moe_switches):
            raise FamilyConfigError(f"the checkpoint was trained with {switch}="
                                    f"{getattr(args, switch, False)!r}, but --model-type-hf "
                                    f"{settings.name} needs {switch in settings.moe_switches!r}")
    held = {f.arg for f in settings.moe_fields}
    # Mixtral's config.json has one width for the experts and none for shared experts.
    width = getattr(args, "moe_ffn_hidden_size", None)
    if "moe_ffn_hidden_size" not in held and width not in (None, args.ffn_hidden_size):
        raise FamilyConfigError(f"--model-type-hf {settings.name}'s config.json cannot hold "
                                f"--moe-ffn-hidden-size {width} other than "
                                f"--ffn-hidden-size {args.ffn_hidden_size}")
    shared = getattr(args, "moe_shared_expert_intermediate_size", None)
    # DeepSeek's config.json counts its shared experts (--n-shared-experts sets the width).
    shared_held = {"moe_shared_expert_intermediate_size", "n_shared_experts"} & held
    if not shared_held and shared is not None:
        raise FamilyConfigError(f"--model-type-hf {settings.name}'s config.json cannot hold "
                                f"shared experts (--moe-shared-expert-intermediate-size)")

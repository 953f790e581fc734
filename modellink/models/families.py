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

from modellink.models.config_dialects import (
    AQUILA, BAICHUAN2, BAICHUAN2_13B, CHATGLM3, CHATGLM3_FIXED, INTERNLM, INTERNLM2,
    INTERNLM_ROTARY, ConfigDialect,
    set_llama_value, strip_llama_keys, to_llama_keys)
from modellink.models.feature_args import SWITCHES, VALUED
from modellink.user_error import UserError


class FamilyConfigError(UserError, ValueError):
    """A config.json this family cannot express in Megatron flags."""


@dataclass(frozen=True)
class Field:
    """One HF config attribute <-> one Megatron args attribute (and its flag)."""
    hf: str
    arg: str
    flag: str
    cast: Callable[[Any], Any] = int
    # For an optional field that config.json cannot leave unset: the field whose value it
    # takes when the feature is off (Gemma 2: a window over every position).
    off_as: Optional[str] = None
    # Megatron's value minus HF's (Mistral: HF's window counts the query's own key, ours not).
    offset: int = 0

    def to_flag(self, hf_value: Any) -> str:
        return str(self.cast(hf_value) + self.offset)

    def to_hf(self, arg_value: Any) -> Any:
        return self.cast(arg_value) - self.offset


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
# MoE config.json keys <-> flags (Mixtral's); the MoE switches a family may set.
_MIXTRAL_MOE = (Field("num_local_experts", "num_experts", "--num-experts"),
                Field("num_experts_per_tok", "moe_router_topk", "--moe-router-topk"))
_MOE_SWITCHES = ("moe_router_pre_softmax", "shared_expert_gate")
# What a Megatron checkpoint's args must say to be exported as the family (check_args).
_LLAMA_ARGS = {"normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
               "add_bias_linear": False}


@dataclass(frozen=True)
class FamilySettings:
    name: str
    model_types: Tuple[str, ...]
    architecture: str
    config_class: Optional[str]
    fields: Tuple[Field, ...] = _LLAMA_FIELDS
    fixed_flags: Tuple[str, ...] = _LLAMA_FLAGS
    qkv_bias: bool = False
    moe_fields: Tuple[Field, ...] = _MIXTRAL_MOE
    # MoE switches (of _MOE_SWITCHES) the family's models are built with (Qwen2-MoE's routing).
    moe_switches: Tuple[str, ...] = ()
    # --add-dense-bias: a bias on the attention output projection only (InternLM).
    dense_bias: bool = False
    moe: bool = False
    # HF config values this family's Megatron model cannot represent: attribute -> allowed.
    required: Dict[str, Any] = field(default_factory=dict)
    # HF config keys whose absence means a model we cannot build: key -> why.
    required_keys: Dict[str, str] = field(default_factory=dict)
    # RoPE scaling types that equal plain RoPE up to max_position_embeddings (the longest
    # sequence the converted model is built for).
    rope_types: Tuple[str, ...] = ("default",)
    # RoPE scaling types carried over as --rope-scaling-type flags (LLaMA 3.1+: llama3).
    rope_scalings: Tuple[str, ...] = ()
    # --qk-layernorm: each head's queries and keys normalised before RoPE (Qwen3).
    qk_layernorm: bool = False
    # --rotary-percent / --rotary-interleaved (ChatGLM: half of each head, adjacent pairs).
    rotary_percent: float = 1.0
    rotary_interleaved: bool = False
    # How config.json spells things where it differs from llama's keys (the trust_remote_code
    # families, whose config_class is None, and Bloom).
    dialect: Optional[ConfigDialect] = None
    # Architecture switches (feature_args.SWITCHES) the family's models are built with.
    features: Tuple[str, ...] = ()
    checked_args: Dict[str, Any] = field(default_factory=lambda: dict(_LLAMA_ARGS))
    # HF config fields that map onto feature flags only when set (None: the feature is off).
    optional_fields: Tuple[Field, ...] = ()
    # Values transformers' config class assumes when config.json leaves the key out.
    defaults: Dict[str, Any] = field(default_factory=dict)
    # --seq-length when config.json has no max_position_embeddings (ALiBi has no such limit).
    seq_length: Optional[int] = None
    # The repeating pattern config.json's layer_types must follow (Gemma 2's sliding layers).
    layer_pattern: Optional[Tuple[str, ...]] = None
    # A second model of the family with settings of its own (Baichuan2-13B, Aquila).
    variant: Optional["Variant"] = None

    @property
    def gated(self) -> bool:
        """Whether linear_fc1 holds [gate; up] (tensor parallelism splits each half)."""
        return "--swiglu" in self.fixed_flags or bool({"geglu", "gelu_tanh"} & set(self.features))


@dataclass(frozen=True)
class Variant:
    """How a family's second model is told apart: by its config.json, and by a Megatron
    checkpoint's flags with the config.json it came from or is written beside (None: unknown)."""
    settings: FamilySettings
    in_config: Callable[[Dict[str, Any]], bool]
    in_checkpoint: Callable[[argparse.Namespace, Optional[Dict[str, Any]]], bool]


_LLAMA_REQUIRED = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
# Aquila/Aquila2 are LLaMA's layout and tensor names under a trust_remote_code config.json.
_AQUILA = FamilySettings("llama2", ("aquila",), "AquilaForCausalLM", None,
                         required={"hidden_act": "silu"}, dialect=AQUILA)

# Baichuan2-13B: the same weights as 7B, ALiBi instead of RoPE, model_max_length for length.
_BAICHUAN2_13B = FamilySettings(
    "baichuan2", ("baichuan",), "BaichuanForCausalLM", None, required={"hidden_act": "silu"},
    fixed_flags=tuple("alibi" if flag == "rope" else flag for flag in _LLAMA_FLAGS),
    checked_args=dict(_LLAMA_ARGS, position_embedding_type="alibi"),
    required_keys={"model_max_length": "Baichuan2-13B's sequence length (a Baichuan2 config "
                                       "without max_position_embeddings is the ALiBi 13B)"},
    dialect=BAICHUAN2_13B)

# Gemma: GeGLU with a tanh GELU gate, RMSNorm scaling by 1 + weight, embeddings x sqrt(hidden).
# transformers reads Gemma's legacy hidden_act "gelu" as the tanh approximation.
_GEMMA_FLAGS = ("--normalization", "RMSNorm", "--position-embedding-type", "rope",
                "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0")
_GEMMA_ARGS = dict(_LLAMA_ARGS, swiglu=False)
_GEMMA_FEATURES = ("gelu_tanh", "add_rmsnorm_offset", "input_embeds_norm")
_GEMMA_REQUIRED = {"attention_bias": False, "use_bidirectional_attention": (None, False)}
# Gemma 2 adds sandwich norms, soft-capping, its own attention scale and sliding layers.
_GEMMA2_FIELDS = (
    Field("attn_logit_softcapping", "attn_logit_softcapping", "--attn-logit-softcapping", float),
    Field("final_logit_softcapping", "output_logit_softcapping", "--output-logit-softcapping",
          float),
    Field("query_pre_attn_scalar", "query_pre_attn_scalar", "--query-pre-attn-scalar"),
    Field("sliding_window", "interleave_sliding_window", "--interleave-sliding-window",
          off_as="max_position_embeddings"),
)
_GEMMA2_DEFAULTS = {"tie_word_embeddings": True, "attn_logit_softcapping": 50.0,
                    "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 256,
                    "sliding_window": 4096}
# Bloom: ALiBi, LayerNorms with bias (one on the embeddings too), biased GELU MLP. Its
# config.json spells the llama keys its own way; the MLP is always 4 x hidden.
_BLOOM = ConfigDialect(
    keys={"num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
          "rms_norm_eps": "layer_norm_epsilon", "intermediate_size": "hidden_size"},
    scales={"intermediate_size": 4},
    template={"architectures": ["BloomForCausalLM"], "model_type": "bloom",
              "apply_residual_connection_post_layernorm": False, "slow_but_exact": False,
              **dict.fromkeys(("n_layer", "n_head", "hidden_size", "layer_norm_epsilon",
                               "vocab_size", "tie_word_embeddings"))})
_BLOOM_FIELDS = (_LLAMA_FIELDS[0], _LLAMA_FIELDS[1], _LLAMA_FIELDS[3], _LLAMA_FIELDS[5])
_BLOOM_FLAGS = ("--normalization", "LayerNorm", "--position-embedding-type", "alibi",
                "--attention-dropout", "0", "--hidden-dropout", "0")
_BLOOM_ARGS = {"normalization": "LayerNorm", "swiglu": False, "position_embedding_type": "alibi",
               "add_bias_linear": True}
# HF's window of W keys ends at the query's own; --sliding-window W counts the keys before it.
_MISTRAL_FIELDS = (Field("sliding_window", "sliding_window", "--sliding-window", offset=-1),)

_QWEN2_MOE = (
    Field("num_experts", "num_experts", "--num-experts"), _MIXTRAL_MOE[1],
    Field("moe_intermediate_size", "moe_ffn_hidden_size", "--moe-ffn-hidden-size"),
    Field("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size",
          "--moe-shared-expert-intermediate-size"))


def _is_aquila(config: Optional[Dict[str, Any]]) -> bool:
    return (config or {}).get("model_type") in _AQUILA.model_types

FAMILIES: Dict[str, FamilySettings] = {
    settings.name: settings for settings in (
        # LLaMA 1/2/3.x, CodeLlama and Yi ship LlamaForCausalLM checkpoints; Aquila its own.
        FamilySettings("llama2", ("llama",), "LlamaForCausalLM", "LlamaConfig",
                       required=_LLAMA_REQUIRED, rope_scalings=("llama3",),
                       variant=Variant(_AQUILA, _is_aquila, lambda args, base: _is_aquila(base))),
        FamilySettings("mistral", ("mistral",), "MistralForCausalLM", "MistralConfig",
                       required={"hidden_act": "silu"}, optional_fields=_MISTRAL_FIELDS,
                       defaults={"sliding_window": 4096}),
        # Qwen 1.5, 2 and 2.5.
        FamilySettings("qwen", ("qwen2",), "Qwen2ForCausalLM", "Qwen2Config", qkv_bias=True,
                       required={"hidden_act": "silu", "use_sliding_window": False}),
        FamilySettings("qwen3", ("qwen3",), "Qwen3ForCausalLM", "Qwen3Config",
                       qk_layernorm=True, required={"hidden_act": "silu", "attention_bias": False,
                                                    "use_sliding_window": False}),
        FamilySettings("mixtral", ("mixtral",), "MixtralForCausalLM", "MixtralConfig", moe=True,
                       required={"hidden_act": "silu"}),
        # Qwen1.5-MoE / Qwen2-MoE: every layer MoE, a softmax over all experts, the top-k's
        # weights not renormalised, one shared expert behind a sigmoid gate.
        FamilySettings("qwen2_moe", ("qwen2_moe",), "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
                       qkv_bias=True, moe=True, moe_fields=_QWEN2_MOE,
                       moe_switches=_MOE_SWITCHES, required={
                           "hidden_act": "silu", "qkv_bias": True, "use_sliding_window": False,
                           "norm_topk_prob": False, "decoder_sparse_step": 1,
                           "mlp_only_layers": ([],)}),
        # Baichuan2-7B; the 13B model's config.json has no max_position_embeddings.
        FamilySettings("baichuan2", ("baichuan",), "BaichuanForCausalLM", None,
                       required={"hidden_act": "silu"}, dialect=BAICHUAN2,
                       variant=Variant(_BAICHUAN2_13B,
                                       lambda config: "max_position_embeddings" not in config,
                                       lambda args, _: args.position_embedding_type == "alibi")),
        # InternLM-1 (7B): LLaMA's layout with biased q/k/v/o projections, RoPE base 10000
        # (its config.json has no key for another); dynamic NTK as for InternLM2 below.
        FamilySettings("internlm", ("internlm",), "InternLMForCausalLM", None, qkv_bias=True,
                       dense_bias=True, dialect=INTERNLM,
                       required={"hidden_act": "silu", "bias": True,
                                 "rotary": INTERNLM_ROTARY}),
        # Dynamic NTK scaling only changes RoPE beyond max_position_embeddings.
        FamilySettings("internlm2", ("internlm2",), "InternLM2ForCausalLM", None,
                       required={"hidden_act": "silu", "bias": False},
                       rope_types=("default", "dynamic"), dialect=INTERNLM2),
        # ChatGLM2/3: RoPE on the first half of each head's channels, adjacent pairs rotated.
        # ChatGLMConfig's own defaults differ from ChatGLM3's for the keys required present.
        FamilySettings("chatglm3", ("chatglm",), "ChatGLMModel", None, qkv_bias=True,
                       required=CHATGLM3_FIXED, rotary_percent=0.5, rotary_interleaved=True,
                       dialect=CHATGLM3, required_keys={
                           key: "ChatGLMConfig's default for it is not ChatGLM3's"
                           for key in ("multi_query_attention", "add_qkv_bias")}),
        FamilySettings("gemma", ("gemma",), "GemmaForCausalLM", "GemmaConfig",
                       fixed_flags=_GEMMA_FLAGS, features=_GEMMA_FEATURES,
                       checked_args=_GEMMA_ARGS, defaults={"tie_word_embeddings": True},
                       required={"hidden_act": ("gelu_pytorch_tanh", "gelu"),
                                 **_GEMMA_REQUIRED}),
        FamilySettings("gemma2", ("gemma2",), "Gemma2ForCausalLM", "Gemma2Config",
                       fixed_flags=_GEMMA_FLAGS, features=_GEMMA_FEATURES + ("post_norm",),
                       checked_args=_GEMMA_ARGS, optional_fields=_GEMMA2_FIELDS,
                       defaults=_GEMMA2_DEFAULTS,
                       layer_pattern=("sliding_attention", "full_attention"),
                       required={"hidden_activation": "gelu_pytorch_tanh", **_GEMMA_REQUIRED}),
        FamilySettings("bloom", ("bloom",), "BloomForCausalLM", "BloomConfig",
                       fields=_BLOOM_FIELDS, fixed_flags=_BLOOM_FLAGS,
                       features=("openai_gelu", "embed_layernorm"), checked_args=_BLOOM_ARGS,
                       dialect=_BLOOM, defaults={"tie_word_embeddings": True}, seq_length=2048,
                       required={"apply_residual_connection_post_layernorm": False,
                                 "slow_but_exact": False}),
    )
}


def get_family(name: str) -> FamilySettings:
    if name not in FAMILIES:
        raise FamilyConfigError(f"unknown --model-type-hf {name!r}; choose from "
                                f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


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


def rope_settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """The RoPE settings with `rope_type` always set: transformers 5 keeps them in
    `rope_parameters`, older configs in `rope_theta` and `rope_scaling` (`type` before 4.45)."""
    scaling = dict(config.get("rope_scaling") or {})
    scaling.setdefault("rope_type", scaling.pop("type", "default"))
    params = {**scaling, **(config.get("rope_parameters") or {})}
    params.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return params


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


def _rope_scaling_flags(config: Dict[str, Any]) -> List[str]:
    params = rope_settings(config)
    if params["rope_type"] != "llama3":
        return []
    flags = ["--rope-scaling-type", "llama3"]
    for flag, _, key, cast in _LLAMA3_SCALING:
        if key not in params:
            raise FamilyConfigError(f"config.json rope_scaling (llama3) has no {key}")
        flags += [flag, str(cast(params[key]))]
    return flags


def _rope_parameters(args: argparse.Namespace) -> Dict[str, Any]:
    params = {"rope_type": args.rope_scaling_type or "default",
              "rope_theta": float(args.rotary_base)}
    if args.rope_scaling_type == "llama3":
        params.update({key: cast(getattr(args, attr)) for _, attr, key, cast in _LLAMA3_SCALING})
    return params


def check_config(settings: FamilySettings, config: Dict[str, Any]) -> None:
    """Refuse configs whose model the family's Megatron flags would not reproduce."""
    model_type = config.get("model_type")
    if model_type not in settings.model_types:
        matches = [f.name for f in FAMILIES.values() if model_type in f.model_types]
        hint = f"; use --model-type-hf {matches[0]}" if matches else ""
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
    flags += ["--seq-length", str(config.get("max_position_embeddings", settings.seq_length)),
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
    values = {f.hf: f.cast(getattr(args, f.arg)) for f in settings.fields}
    values.update(vocab_size=vocab_size, head_dim=args.kv_channels or args.hidden_size // heads,
                  num_key_value_heads=args.num_query_groups if args.group_query_attention
                  else heads, tie_word_embeddings=not args.untie_embeddings_and_output_weights,
                  rope_theta=float(args.rotary_base))
    for key, value in values.items():
        set_llama_value(dialect, config, key, value)
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
    expected.update({attr: None for attr in VALUED
                     if attr not in {f.arg for f in settings.optional_fields}})
    for attr, value in expected.items():
        held = getattr(args, attr, False if attr in SWITCHES else None)
        if held != value:
            raise FamilyConfigError(f"the checkpoint was trained with {attr}={held!r}, but "
                                    f"--model-type-hf {settings.name} needs {value!r}")
    # Checkpoints written before --rotary-interleaved existed rotate halves.
    if getattr(args, "rotary_interleaved", False) != settings.rotary_interleaved:
        raise FamilyConfigError(f"the checkpoint was trained "
                                f"{'with' if not settings.rotary_interleaved else 'without'} "
                                f"--rotary-interleaved, but --model-type-hf {settings.name} "
                                f"{'needs' if settings.rotary_interleaved else 'cannot hold'} it")
    # Checkpoints written before --add-dense-bias existed have no such bias.
    if getattr(args, "add_dense_bias", False) != settings.dense_bias:
        raise FamilyConfigError(f"the checkpoint was trained "
                                f"{'without' if settings.dense_bias else 'with'} "
                                f"--add-dense-bias, but --model-type-hf {settings.name} "
                                f"{'needs' if settings.dense_bias else 'cannot hold'} it")
    if getattr(args, "qk_layernorm", False) != settings.qk_layernorm:
        raise FamilyConfigError(f"the checkpoint was trained "
                                f"{'without' if settings.qk_layernorm else 'with'} "
                                f"--qk-layernorm, but --model-type-hf {settings.name} "
                                f"{'needs' if settings.qk_layernorm else 'cannot hold'} it")
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
    for switch in _MOE_SWITCHES:
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
    if "moe_shared_expert_intermediate_size" not in held and shared is not None:
        raise FamilyConfigError(f"--model-type-hf {settings.name}'s config.json cannot hold "
                                f"shared experts (--moe-shared-expert-intermediate-size)")

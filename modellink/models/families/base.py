"""What a model family is, as data: its settings, weight mapping, prompt template and sizes.

`FamilySettings` says which HF `model_type`s a family accepts, the HF class and config class it
writes back, the flags every checkpoint of the family implies, and which HF config fields map
onto which Megatron flags (hf_config.py turns these into flags and back). `Family` bundles
those settings with the rest of what one family file defines, so that adding a family is one
file plus its test (registry.py checks every part is there).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from modellink.checkpoint.mappings import WeightMapping
from modellink.models.config_dialects import ConfigDialect
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
    # HF's value is Megatron's times this (Qwen-1: intermediate_size counts w1's and w2's rows).
    factor: int = 1

    def to_flag(self, hf_value: Any) -> str:
        value = self.cast(hf_value)
        if self.factor != 1:
            if value % self.factor:
                raise FamilyConfigError(f"config.json {self.hf}={hf_value!r} is not a multiple "
                                        f"of {self.factor}")
            value //= self.factor
        return str(value + self.offset)

    def to_hf(self, arg_value: Any) -> Any:
        return (self.cast(arg_value) - self.offset) * self.factor


LLAMA_FIELDS = (
    Field("num_hidden_layers", "num_layers", "--num-layers"),
    Field("hidden_size", "hidden_size", "--hidden-size"),
    Field("intermediate_size", "ffn_hidden_size", "--ffn-hidden-size"),
    Field("num_attention_heads", "num_attention_heads", "--num-attention-heads"),
    Field("max_position_embeddings", "max_position_embeddings", "--max-position-embeddings"),
    Field("rms_norm_eps", "norm_epsilon", "--norm-epsilon", float),
)
LLAMA_FLAGS = ("--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope",
               "--disable-bias-linear", "--attention-dropout", "0", "--hidden-dropout", "0")
# MoE config.json keys <-> flags (Mixtral's); the MoE switches a family may set.
MIXTRAL_MOE = (Field("num_local_experts", "num_experts", "--num-experts"),
               Field("num_experts_per_tok", "moe_router_topk", "--moe-router-topk"))
MOE_SWITCHES = ("moe_router_pre_softmax", "shared_expert_gate")
# What a Megatron checkpoint's args must say to be exported as the family (check_args).
LLAMA_ARGS = {"normalization": "RMSNorm", "swiglu": True, "position_embedding_type": "rope",
              "add_bias_linear": False}


@dataclass(frozen=True)
class FamilySettings:
    name: str
    model_types: Tuple[str, ...]
    architecture: str
    config_class: Optional[str]
    fields: Tuple[Field, ...] = LLAMA_FIELDS
    fixed_flags: Tuple[str, ...] = LLAMA_FLAGS
    qkv_bias: bool = False
    moe_fields: Tuple[Field, ...] = MIXTRAL_MOE
    # MoE switches (of MOE_SWITCHES) the family's models are built with (Qwen2-MoE's routing).
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
    checked_args: Dict[str, Any] = field(default_factory=lambda: dict(LLAMA_ARGS))
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
    # Which config.json of its model_types is this family's, where two families share one
    # (Baichuan and Baichuan2: "baichuan"); None: all of them, and the model_types are its own.
    claims: Optional[Callable[[Dict[str, Any]], bool]] = None

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
    # Its weights, where they are laid out otherwise (None: the family's mapping).
    mapping: Optional[WeightMapping] = None


@dataclass(frozen=True)
class Layout:
    """How ModelLink's example scripts train one size: parallel degrees, activation
    recomputation ("full", "selective" or None) and batch sizes in samples."""
    tp: int
    pp: int
    micro_batch: int
    global_batch: int
    ep: int = 1
    recompute: Optional[str] = None

    @property
    def devices(self) -> int:
        """The devices one model replica spans."""
        return self.tp * self.pp * self.ep

    def flags(self, recompute: bool = True) -> List[str]:
        """The `pretrain_gpt.py` flags of this layout (sequence parallelism with any TP, as
        the example scripts run it and as MoE with TP requires); `recompute=False` leaves the
        recomputation setting to the caller."""
        flags = ["--tensor-model-parallel-size", str(self.tp),
                 "--pipeline-model-parallel-size", str(self.pp),
                 "--expert-model-parallel-size", str(self.ep),
                 "--micro-batch-size", str(self.micro_batch),
                 "--global-batch-size", str(self.global_batch)]
        if self.tp > 1:
            flags.append("--sequence-parallel")
        if not recompute:
            return flags
        if self.recompute == "full":
            flags += ["--recompute-granularity", "full", "--recompute-method", "uniform",
                      "--recompute-num-layers", "1"]
        elif self.recompute == "selective":
            flags += ["--recompute-granularity", "selective"]
        return flags


@dataclass(frozen=True)
class Size:
    """A published model of a family: its architecture numbers (the values of its config.json,
    in llama-style keys) and the layout it is trained with."""
    layers: int
    hidden: int
    ffn: int
    heads: int
    vocab: int
    seq_length: int
    layout: Layout
    query_groups: Optional[int] = None  # None: one per head (no GQA)
    head_dim: Optional[int] = None  # None: hidden / heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied: bool = False
    experts: Optional[int] = None
    topk: Optional[int] = None
    moe_ffn: Optional[int] = None  # per routed expert, where it differs from ffn
    shared_ffn: Optional[int] = None  # the shared experts' width (Qwen2-MoE)
    # The family's variant model (Baichuan2-13B) rather than its main one.
    variant: bool = False
    # Further config.json values of this size (Gemma 2-27B's query_pre_attn_scalar).
    extra: Dict[str, Any] = field(default_factory=dict)
    # Its --prompt-type where ModelLink names one of its own (DeepSeek-V2: deepseek2).
    template: Optional[str] = None

    @property
    def groups(self) -> int:
        return self.query_groups or self.heads


@dataclass(frozen=True)
class Family:
    """Everything about one model family; each family file defines one as `FAMILY`."""
    settings: FamilySettings
    mapping: WeightMapping
    # The default --prompt-type (a name in modellink/data/templates.py).
    template: str
    # Published sizes by name ("7b"); preset names are "<family>-<size>".
    sizes: Dict[str, Size]
    # Which published models the family covers and what sets it apart.
    notes: str

    @property
    def name(self) -> str:
        return self.settings.name

    def mapping_for(self, settings: FamilySettings) -> WeightMapping:
        """The weight mapping of the family's model that `settings` (its own or its variant's,
        as variant_for_config / variant_for_args chose) describes."""
        variant = self.settings.variant
        if variant is not None and settings is variant.settings and variant.mapping is not None:
            return variant.mapping
        return self.mapping

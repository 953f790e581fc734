"""Qwen-1 (Qwen-7B, -14B, -72B and their chat models): a remote-code checkpoint (model_type
"qwen", QWenLMHeadModel) in GPT-2's tensor names. q, k and v are packed in one biased c_attn
(all q rows, then k, then v; no GQA), the output projection has no bias, and the MLP is
c_proj(w1(x) * silu(w2(x))): w2 is the gate, and config.json's intermediate_size counts w1's
and w2's rows together (twice --ffn-hidden-size). RoPE covers every channel (a rotary_pct
other than 1 is refused). config.json keeps the context the model was trained at, seq_length,
beside max_position_embeddings; its use_dynamic_ntk and use_logn_attn change attention only
beyond seq_length, so the Megatron model (plain RoPE) computes the same function up to it.
Qwen1.5, 2 and 2.5 are the qwen25 family."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy, PackedQKV
from modellink.models.config_dialects import ConfigDialect
from modellink.models.families.base import (
    LLAMA_FIELDS, Family, FamilySettings, Field, Layout, Size)

_VOCAB = 151936
# Its own keys for the llama-style ones the converter reads.
_KEYS = {"rms_norm_eps": "layer_norm_epsilon", "rope_theta": "rotary_emb_base",
         "head_dim": "kv_channels"}
_FIELDS = tuple(Field("intermediate_size", "ffn_hidden_size", "--ffn-hidden-size", factor=2)
                if f.hf == "intermediate_size" else f for f in LLAMA_FIELDS)
# What the Megatron model computes, as every published config.json has it: biases only on
# c_attn, RoPE over whole heads, scores scaled by 1/sqrt(kv_channels).
_FIXED = {"no_bias": True, "rotary_pct": 1.0, "scale_attn_weights": True}
_DIALECT = ConfigDialect(keys=_KEYS, seq_length="seq_length", template={
    "architectures": ["QWenLMHeadModel"], "model_type": "qwen", **_FIXED,
    "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                 "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
    "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "use_dynamic_ntk": True,
    "use_logn_attn": True, "use_flash_attn": "auto", "tokenizer_class": "QWenTokenizer",
    **dict.fromkeys(("hidden_size", "num_attention_heads", "intermediate_size",
                     "num_hidden_layers", "max_position_embeddings", "vocab_size",
                     "tie_word_embeddings", "seq_length") + tuple(_KEYS.values()))})

FAMILY = Family(
    settings=FamilySettings(
        "qwen", ("qwen",), "QWenLMHeadModel", None, fields=_FIELDS, qkv_bias=True,
        dialect=_DIALECT, required=_FIXED,
        required_keys={"seq_length": "the context Qwen-1 was trained at (--seq-length)"}),
    mapping=WeightMapping(
        layer=(
            Copy("input_layernorm.weight", "ln_1.weight"),
            PackedQKV("self_attention.linear_qkv.weight", "attn.c_attn.weight"),
            PackedQKV("self_attention.linear_qkv.bias", "attn.c_attn.bias"),
            Copy("self_attention.linear_proj.weight", "attn.c_proj.weight"),
            Copy("pre_mlp_layernorm.weight", "ln_2.weight"),
            Concat("mlp.linear_fc1.weight", ("mlp.w2.weight", "mlp.w1.weight")),  # [gate; up]
            Copy("mlp.linear_fc2.weight", "mlp.c_proj.weight"),
        ),
        embedding="transformer.wte.weight", final_norm="transformer.ln_f.weight",
        layer_prefix="transformer.h.{i}."),
    template="qwen",
    # ffn is config.json's intermediate_size (w1 and w2 together); extra holds its seq_length.
    sizes={
        "7b": Size(32, 4096, 22016, 32, _VOCAB, 32768, Layout(
            tp=8, pp=1, micro_batch=2, global_batch=64), norm_eps=1e-6,
            extra={"seq_length": 8192}),
        "14b": Size(40, 5120, 27392, 40, _VOCAB, 8192, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=16), norm_eps=1e-6,
            extra={"seq_length": 2048}),
        "72b": Size(80, 8192, 49152, 64, _VOCAB, 32768, Layout(
            tp=8, pp=8, micro_batch=1, global_batch=512), norm_eps=1e-6, rope_theta=1e6,
            extra={"seq_length": 32768}),
    },
    notes="Qwen-7B, Qwen-14B and Qwen-72B (Qwen-1, remote code); dynamic NTK and logn "
          "attention act only beyond config.json's seq_length and are not modelled.")

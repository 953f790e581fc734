"""Tiny checkpoints of the trust_remote_code families, in their published layouts.

transformers has no classes for Baichuan, Baichuan2, Aquila, InternLM, InternLM2, ChatGLM3 or
MiniCPM and no code may be downloaded, so each case is a transformers model that computes the
same function (Llama for Baichuan-7B, Baichuan2-7B, Aquila and InternLM2; Llama with
attention_bias, which puts biases on q/k/v and o as InternLM's modeling code does, for InternLM;
GLM-4's GlmForCausalLM for ChatGLM3: RoPE on half of each head's channels, adjacent pairs
rotated, QKV bias, RMSNorm, SwiGLU, untied head), whose state dict is rewritten here into the
family's own tensor names, fused layouts and config.json. Baichuan-13B and Baichuan2-13B
(ALiBi) and MiniCPM (muP scales) have no transformers counterpart; their reference is their
forward pass, written out below over a Llama's weights. Qwen-1's reference (QwenReference) is
its forward pass written out from the published modeling_qwen.py over the checkpoint's own
tensors and config.json; a Qwen2 model only supplies the random weights. All of this follows
the families' modeling code, independently of modellink.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

State = Dict[str, torch.Tensor]

SHAPE = dict(vocab_size=250, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
             num_attention_heads=4, max_position_embeddings=64)


def _layers(config: transformers.PretrainedConfig) -> range:
    return range(config.num_hidden_layers)


def _baichuan2(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    out = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"],
           "model.norm.weight": sd["model.norm.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for i in _layers(c):
        p = f"model.layers.{i}."
        out[p + "self_attn.W_pack.weight"] = torch.cat(
            [sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        for name in ("self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                     "input_layernorm", "post_attention_layernorm"):
            out[p + name + ".weight"] = sd[p + name + ".weight"]
    config = {"architectures": ["BaichuanForCausalLM"], "model_type": "baichuan",
              "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
              "hidden_act": "silu", "hidden_size": c.hidden_size,
              "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_position_embeddings,
              "model_max_length": c.max_position_embeddings,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers, "rms_norm_eps": c.rms_norm_eps,
              "tie_word_embeddings": False, "vocab_size": c.vocab_size, "z_loss_weight": 0,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "use_cache": True}
    return out, config


def _baichuan(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """Baichuan-7B: Baichuan2-7B's tensors (its head used as it is) under Baichuan-7B's
    config.json, whose classes are spelled BaiChuan."""
    tensors, config = _baichuan2(sd, c)
    for key in ("model_max_length", "z_loss_weight"):  # Baichuan2's additions
        del config[key]
    config.update(architectures=["BaiChuanForCausalLM"],
                  auto_map={"AutoConfig": "configuration_baichuan.BaiChuanConfig",
                            "AutoModelForCausalLM": "modeling_baichuan.BaiChuanForCausalLM"})
    return tensors, config


def _baichuan2_13b(sd: State, c: transformers.PretrainedConfig
                   ) -> Tuple[State, Dict[str, Any]]:
    tensors, config = _baichuan2(sd, c)
    del config["max_position_embeddings"]  # 13B's config.json: model_max_length only
    return tensors, config


def _baichuan_13b(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """Baichuan-13B: Baichuan2-13B's checkpoint without z_loss_weight (and no NormHead)."""
    tensors, config = _baichuan2_13b(sd, c)
    del config["z_loss_weight"]
    return tensors, config


def _baichuan_alibi_slopes(heads: int) -> List[float]:
    """Baichuan2-13B's _get_interleave."""
    def power_of_2(n: int) -> List[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]
    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + _baichuan_alibi_slopes(2 * closest)[0::2][:heads - closest]


class Baichuan13BReference(torch.nn.Module):
    """Baichuan2-13B's forward over a Llama's weights: the Llama without RoPE, with ALiBi's
    mask (slope x key position, plus the causal mask) added to the scaled scores."""

    def __init__(self, llama: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        model, config = self.llama.model, self.llama.config
        batch, seq = input_ids.shape
        heads = config.num_attention_heads
        dim = config.hidden_size // heads
        slopes = torch.tensor(_baichuan_alibi_slopes(heads))
        mask = slopes[:, None, None] * torch.arange(seq)[None, None, :] + \
            torch.full((seq, seq), float("-inf")).triu(1)
        hidden = model.embed_tokens(input_ids)
        for layer in model.layers:
            x, attn = layer.input_layernorm(hidden), layer.self_attn
            q, k, v = (getattr(attn, f"{n}_proj")(x).view(batch, seq, heads, dim).transpose(1, 2)
                       for n in "qkv")
            probs = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(dim) + mask, dim=-1)
            hidden = hidden + attn.o_proj((probs @ v).transpose(1, 2).reshape(batch, seq, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return SimpleNamespace(logits=self.llama.lm_head(model.norm(hidden)))


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE over [batch, heads, seq, dim], halves rotated (LLaMA's rotate_half)."""
    dim = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles = torch.arange(x.shape[2], dtype=torch.float32)[:, None] * freqs
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    return x * cos + torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], -1) * sin


# MiniCPM's muP scales, as a tiny model's config.json holds them (dim_model_base: hidden / 4).
MINICPM_SCALES = {"scale_emb": 12, "dim_model_base": 16, "scale_depth": 1.4}


class MiniCPMReference(torch.nn.Module):
    """MiniCPM's forward (modeling_minicpm.py) over a Llama's weights: embeddings x scale_emb,
    each attention and MLP output x scale_depth / sqrt(layers) before its residual add, final
    hidden states / (hidden / dim_model_base) before the tied head."""

    def __init__(self, llama: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.llama = llama

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        model, config = self.llama.model, self.llama.config
        batch, seq = input_ids.shape
        heads, groups = config.num_attention_heads, config.num_key_value_heads
        dim, theta = config.hidden_size // heads, config.rope_parameters["rope_theta"]
        branch = MINICPM_SCALES["scale_depth"] / math.sqrt(config.num_hidden_layers)
        causal = torch.full((seq, seq), float("-inf")).triu(1)
        hidden = model.embed_tokens(input_ids) * MINICPM_SCALES["scale_emb"]
        for layer in model.layers:
            x, attn = layer.input_layernorm(hidden), layer.self_attn
            q, k, v = (getattr(attn, f"{n}_proj")(x).view(batch, seq, -1, dim).transpose(1, 2)
                       for n in "qkv")
            q, k = _rotate(q, theta), _rotate(k, theta)
            k, v = (t.repeat_interleave(heads // groups, dim=1) for t in (k, v))
            probs = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(dim) + causal, dim=-1)
            out = attn.o_proj((probs @ v).transpose(1, 2).reshape(batch, seq, -1))
            hidden = hidden + out * branch
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden)) * branch
        divisor = config.hidden_size / MINICPM_SCALES["dim_model_base"]
        return SimpleNamespace(logits=self.llama.lm_head(model.norm(hidden) / divisor))


def _minicpm(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """MiniCPM's checkpoint is a tied Llama's tensors (no lm_head) under its own config.json,
    as MiniCPM-2B ships it (no rope_theta: the class default, 10000)."""
    config = {"architectures": ["MiniCPMForCausalLM"], "model_type": "minicpm",
              "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMConfig",
                           "AutoModel": "modeling_minicpm.MiniCPMModel",
                           "AutoModelForCausalLM": "modeling_minicpm.MiniCPMForCausalLM"},
              "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
              "hidden_size": c.hidden_size, "initializer_range": 0.1,
              "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_position_embeddings,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers,
              "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": c.rms_norm_eps,
              "rope_scaling": None, "tie_word_embeddings": True, "use_cache": True,
              "vocab_size": c.vocab_size, **MINICPM_SCALES}
    return {name: tensor for name, tensor in sd.items() if name != "lm_head.weight"}, config


def _aquila(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """Aquila2's checkpoint is a Llama's tensors under its own config.json (as Aquila2-34B's:
    GQA, its RoPE base)."""
    config = {"architectures": ["AquilaForCausalLM"], "model_type": "aquila",
              "auto_map": {"AutoConfig": "configuration_aquila.AquilaConfig",
                           "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM"},
              "hidden_act": "silu", "hidden_size": c.hidden_size,
              "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_position_embeddings,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers,
              "num_key_value_heads": c.num_key_value_heads, "rms_norm_eps": c.rms_norm_eps,
              "rope_theta": c.rope_parameters["rope_theta"], "rope_scaling": None,
              "tie_word_embeddings": False, "vocab_size": c.vocab_size,
              "bos_token_id": 100006, "eos_token_id": 100007, "pad_token_id": 0,
              "use_cache": True}
    return dict(sd), config


def _internlm(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """InternLM-7B's checkpoint is a Llama's tensor names (the biases included) under its own
    config.json, as internlm-chat-7b ships it after the dynamic NTK update."""
    config = {"architectures": ["InternLMForCausalLM"], "model_type": "internlm",
              "auto_map": {"AutoConfig": "configuration_internlm.InternLMConfig",
                           "AutoModel": "modeling_internlm.InternLMForCausalLM",
                           "AutoModelForCausalLM": "modeling_internlm.InternLMForCausalLM"},
              "bias": True, "hidden_act": "silu", "hidden_size": c.hidden_size,
              "initializer_range": 0.02, "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_position_embeddings,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers, "rms_norm_eps": c.rms_norm_eps,
              "rotary": {"base": 10000, "type": "dynamic"}, "tie_word_embeddings": False,
              "vocab_size": c.vocab_size, "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 0, "use_cache": True}
    return dict(sd), config


def _internlm2(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    out = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"],
           "model.norm.weight": sd["model.norm.weight"], "output.weight": sd["lm_head.weight"]}
    d = c.hidden_size // c.num_attention_heads
    groups = c.num_key_value_heads
    per_group = c.num_attention_heads // groups * d
    for i in _layers(c):
        p, q = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        # wqkv rows, as InternLM2 splits them: "(h gs d)" with gs = q heads per group + 2.
        out[p + "attention.wqkv.weight"] = torch.cat([torch.cat([
            sd[q + "q_proj.weight"][g * per_group:(g + 1) * per_group],
            sd[q + "k_proj.weight"][g * d:(g + 1) * d],
            sd[q + "v_proj.weight"][g * d:(g + 1) * d]]) for g in range(groups)])
        renames = {"self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1",
                   "mlp.up_proj": "feed_forward.w3", "mlp.down_proj": "feed_forward.w2",
                   "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
        for ours, theirs in renames.items():
            out[p + theirs + ".weight"] = sd[p + ours + ".weight"]
    config = {"architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2",
              "auto_map": {"AutoConfig": "configuration_internlm2.InternLM2Config",
                           "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
              "attn_implementation": "eager", "bias": False, "hidden_act": "silu",
              "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
              "max_position_embeddings": c.max_position_embeddings,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers, "num_key_value_heads": groups,
              "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_parameters["rope_theta"],
              # As internlm2-7b ships it; dynamic NTK changes nothing below 64 positions.
              "rope_scaling": {"type": "dynamic", "factor": 2.0},
              "tie_word_embeddings": False, "vocab_size": c.vocab_size,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True}
    return out, config


def _chatglm3(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    t = "transformer."
    kv_channels = c.head_dim
    rotary = kv_channels // 2  # ChatGLM's RotaryEmbedding(rotary_dim // 2), built in fp32 here
    out = {t + "embedding.word_embeddings.weight": sd["model.embed_tokens.weight"],
           t + "rotary_pos_emb.inv_freq":
               1.0 / (10000 ** (torch.arange(0, rotary, 2).to(torch.float32) / rotary)),
           t + "encoder.final_layernorm.weight": sd["model.norm.weight"],
           t + "output_layer.weight": sd["lm_head.weight"]}
    for i in _layers(c):
        p, q = f"{t}encoder.layers.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            out[p + f"self_attention.query_key_value.{kind}"] = torch.cat(
                [sd[q + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
        out[p + "self_attention.dense.weight"] = sd[q + "self_attn.o_proj.weight"]
        out[p + "mlp.dense_h_to_4h.weight"] = sd[q + "mlp.gate_up_proj.weight"]
        out[p + "mlp.dense_4h_to_h.weight"] = sd[q + "mlp.down_proj.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[p + norm + ".weight"] = sd[q + norm + ".weight"]
    config = {"architectures": ["ChatGLMModel"], "model_type": "chatglm",
              "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                           "AutoModelForCausalLM":
                               "modeling_chatglm.ChatGLMForConditionalGeneration"},
              "add_bias_linear": False, "add_qkv_bias": True,
              "apply_query_key_layer_scaling": True,
              "apply_residual_connection_post_layernorm": False, "attention_dropout": 0.0,
              "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
              "ffn_hidden_size": c.intermediate_size, "fp32_residual_connection": False,
              "hidden_dropout": 0.0, "hidden_size": c.hidden_size, "kv_channels": kv_channels,
              "layernorm_epsilon": c.rms_norm_eps, "multi_query_attention": True,
              "multi_query_group_num": c.num_key_value_heads,
              "num_attention_heads": c.num_attention_heads, "num_layers": c.num_hidden_layers,
              "original_rope": True, "padded_vocab_size": c.vocab_size, "post_layer_norm": True,
              "rmsnorm": True, "seq_length": c.max_position_embeddings, "use_cache": True,
              "tie_word_embeddings": False, "eos_token_id": 2, "pad_token_id": 0}
    return out, config


def _qwen(sd: State, c: transformers.PretrainedConfig) -> Tuple[State, Dict[str, Any]]:
    """Qwen-1's checkpoint of a Qwen2 model without GQA (the same function): q/k/v packed in
    c_attn, gate_proj as w2 and up_proj as w1, under Qwen-7B's config.json (its seq_length a
    quarter of max_position_embeddings, as Qwen-7B's 8192 of 32768)."""
    t = "transformer."
    out = {t + "wte.weight": sd["model.embed_tokens.weight"],
           t + "ln_f.weight": sd["model.norm.weight"], "lm_head.weight": sd["lm_head.weight"]}
    renames = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2",
               "self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.w1",
               "mlp.gate_proj": "mlp.w2", "mlp.down_proj": "mlp.c_proj"}
    for i in _layers(c):
        p, q = f"{t}h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            out[p + f"attn.c_attn.{kind}"] = torch.cat(
                [sd[q + f"self_attn.{x}_proj.{kind}"] for x in "qkv"])
        for ours, theirs in renames.items():
            out[p + theirs + ".weight"] = sd[q + ours + ".weight"]
    config = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen",
              "auto_map": {"AutoConfig": "configuration_qwen.QWenConfig",
                           "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel"},
              "attn_dropout_prob": 0.0, "bf16": False, "emb_dropout_prob": 0.0, "fp16": False,
              "fp32": False, "hidden_size": c.hidden_size, "initializer_range": 0.02,
              "intermediate_size": 2 * c.intermediate_size,
              "kv_channels": c.hidden_size // c.num_attention_heads,
              "layer_norm_epsilon": c.rms_norm_eps,
              "max_position_embeddings": c.max_position_embeddings, "no_bias": True,
              "num_attention_heads": c.num_attention_heads,
              "num_hidden_layers": c.num_hidden_layers, "onnx_safe": None,
              "rotary_emb_base": int(c.rope_parameters["rope_theta"]), "rotary_pct": 1.0,
              "scale_attn_weights": True, "seq_length": c.max_position_embeddings // 4,
              "softmax_in_fp32": False, "tie_word_embeddings": False,
              "tokenizer_class": "QWenTokenizer", "use_cache": True, "use_cache_kernel": False,
              "use_cache_quantization": False, "use_dynamic_ntk": True, "use_flash_attn": "auto",
              "use_logn_attn": True, "vocab_size": c.vocab_size}
    return out, config


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class QwenReference(torch.nn.Module):
    """QWenLMHeadModel's forward (modeling_qwen.py) over a Qwen-1 checkpoint's tensors and
    config.json: RMSNorm ln_1, c_attn split into q|k|v of kv_channels per head, RoPE on every
    channel (halves rotated, base rotary_emb_base), causal softmax(q k^T / sqrt(kv_channels)),
    c_proj without bias; RMSNorm ln_2, c_proj(w1(x) * silu(w2(x))); ln_f, lm_head. Dynamic NTK
    and logn scaling are left out: they act only beyond seq_length, which no test reaches."""

    def __init__(self, tensors: State, config: Dict[str, Any]) -> None:
        super().__init__()
        self.tensors, self.config = tensors, config

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        t, c = self.tensors, self.config
        if input_ids.shape[1] > c["seq_length"]:
            raise ValueError("QwenReference leaves out what acts beyond seq_length")
        batch, seq = input_ids.shape
        heads, dim, eps = c["num_attention_heads"], c["kv_channels"], c["layer_norm_epsilon"]
        causal = torch.full((seq, seq), float("-inf")).triu(1)
        hidden = F.embedding(input_ids, t["transformer.wte.weight"])
        for i in range(c["num_hidden_layers"]):
            p = f"transformer.h.{i}."
            x = _rms(hidden, t[p + "ln_1.weight"], eps)
            mixed = F.linear(x, t[p + "attn.c_attn.weight"], t[p + "attn.c_attn.bias"])
            q, k, v = (part.view(batch, seq, heads, dim).transpose(1, 2)
                       for part in mixed.split(heads * dim, dim=-1))
            q, k = _rotate(q, c["rotary_emb_base"]), _rotate(k, c["rotary_emb_base"])
            probs = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(dim) + causal, dim=-1)
            context = (probs @ v).transpose(1, 2).reshape(batch, seq, heads * dim)
            hidden = hidden + F.linear(context, t[p + "attn.c_proj.weight"])
            x = _rms(hidden, t[p + "ln_2.weight"], eps)
            up, gate = (F.linear(x, t[p + f"mlp.{w}.weight"]) for w in ("w1", "w2"))
            gated = up * F.silu(gate)
            hidden = hidden + F.linear(gated, t[p + "mlp.c_proj.weight"])
        hidden = _rms(hidden, t["transformer.ln_f.weight"], eps)
        return SimpleNamespace(logits=F.linear(hidden, t["lm_head.weight"]))


def _qwen_weights() -> transformers.Qwen2Config:
    """The Qwen2 model whose random weights a tiny Qwen-1 checkpoint holds: no GQA, no o_proj
    bias (as Qwen-1), untied."""
    return transformers.Qwen2Config(**SHAPE, num_key_value_heads=SHAPE["num_attention_heads"],
                                    rms_norm_eps=1e-6, tie_word_embeddings=False)


def _qwen_reference(model: transformers.PreTrainedModel) -> QwenReference:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return QwenReference(*_qwen(state, model.config))


@dataclass(frozen=True)
class RemoteFamily:
    reference: Callable[[], transformers.PretrainedConfig]
    rewrite: Callable[[State, transformers.PretrainedConfig], Tuple[State, Dict[str, Any]]]
    normalized_head: Optional[str] = None  # Baichuan2's NormHead weight
    family: Optional[str] = None  # --model-type-hf, where it is not the case's name
    # The written-out forward over the reference's weights, where no transformers class
    # computes the family's function (Baichuan2-13B, MiniCPM).
    forward: Optional[Callable[[transformers.PreTrainedModel], torch.nn.Module]] = None


REMOTE_FAMILIES: Dict[str, RemoteFamily] = {
    "baichuan2": RemoteFamily(lambda: transformers.LlamaConfig(**SHAPE, num_key_value_heads=4),
                              _baichuan2, normalized_head="lm_head.weight"),
    # 6 heads: ALiBi's slopes for a head count that is not a power of two, as 13B's 40.
    "baichuan2_13b": RemoteFamily(
        lambda: transformers.LlamaConfig(**dict(SHAPE, hidden_size=96, num_attention_heads=6),
                                         num_key_value_heads=6),
        _baichuan2_13b, normalized_head="lm_head.weight", family="baichuan2",
        forward=Baichuan13BReference),
    # Baichuan-7B and -13B: no NormHead, so the heads' logits as they are.
    "baichuan": RemoteFamily(lambda: transformers.LlamaConfig(**SHAPE, num_key_value_heads=4),
                             _baichuan),
    "baichuan_13b": RemoteFamily(
        lambda: transformers.LlamaConfig(**dict(SHAPE, hidden_size=96, num_attention_heads=6),
                                         num_key_value_heads=6),
        _baichuan_13b, family="baichuan", forward=Baichuan13BReference),
    "internlm2": RemoteFamily(lambda: transformers.LlamaConfig(**SHAPE, num_key_value_heads=2),
                              _internlm2),
    # InternLM-1 has no GQA; its modeling code is LLaMA's with biased q/k/v/o projections.
    "internlm": RemoteFamily(lambda: transformers.LlamaConfig(
        **SHAPE, num_key_value_heads=4, attention_bias=True), _internlm),
    # No transformers class: LlamaForCausalLM is the function Aquila's modeling code computes.
    "aquila": RemoteFamily(lambda: transformers.LlamaConfig(
        **SHAPE, num_key_value_heads=2, rope_parameters={"rope_type": "default",
                                                        "rope_theta": 1e6}),
                           _aquila, family="llama2"),
    "chatglm3": RemoteFamily(lambda: transformers.GlmConfig(
        **SHAPE, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        partial_rotary_factor=0.5, attention_bias=True, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=2, bos_token_id=1), _chatglm3),
    # Qwen-1: the written-out forward over the checkpoint, not the Qwen2 model's.
    "qwen": RemoteFamily(_qwen_weights, _qwen, forward=_qwen_reference),
    # GQA as MiniCPM-1B has it; MiniCPM-2B's heads are its query groups.
    "minicpm": RemoteFamily(lambda: transformers.LlamaConfig(
        **SHAPE, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True),
        _minicpm, forward=MiniCPMReference),
}


def model_type_hf(case: str) -> str:
    spec = REMOTE_FAMILIES.get(case)
    return spec.family if spec is not None and spec.family else case


def save_remote(family: str, model: transformers.PreTrainedModel,
                directory: Path) -> torch.nn.Module:
    """Write `model` as a checkpoint of `family`; returns the model that computes the
    checkpoint's function (Baichuan2's with the normalised head NormHead uses at inference)."""
    spec = REMOTE_FAMILIES[family]
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors, config = spec.rewrite(state, model.config)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(dict(config, torch_dtype="float32")))
    if spec.normalized_head:
        with torch.no_grad():
            model.lm_head.weight.copy_(F.normalize(model.lm_head.weight, dim=1))
    return spec.forward(model) if spec.forward is not None else model


def load_remote(directory: Path) -> Tuple[State, Dict[str, Any]]:
    tensors: State = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors, json.loads((directory / "config.json").read_text())


def expected_round_trip(family: str, tensors: State) -> State:
    """What Megatron -> HF gives back: the checkpoint, with Baichuan2's head normalised."""
    name = REMOTE_FAMILIES[family].normalized_head
    return tensors if name is None else dict(tensors, **{name: F.normalize(tensors[name], dim=1)})

"""ChatGLM2/3: RoPE on the first half of each head's channels with adjacent pairs rotated,
multi-query attention with biased q/k/v packed in one tensor, and a config.json of its own
(`num_layers`, `ffn_hidden_size`, `multi_query_group_num`, ...)."""
from __future__ import annotations

import torch

from modellink.checkpoint.mappings import Buffer, ModelShape, WeightMapping
from modellink.checkpoint.rules import Copy, PackedQKV
from modellink.models.config_dialects import ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size

_KEYS = {"num_hidden_layers": "num_layers", "intermediate_size": "ffn_hidden_size",
         "max_position_embeddings": "seq_length", "rms_norm_eps": "layernorm_epsilon",
         "num_key_value_heads": "multi_query_group_num", "head_dim": "kv_channels",
         "vocab_size": "padded_vocab_size", "rope_theta": "rope_ratio"}
# The architecture switches a config.json must hold these values of.
FIXED = {"rmsnorm": True, "add_bias_linear": False, "add_qkv_bias": True,
         "post_layer_norm": True, "apply_residual_connection_post_layernorm": False,
         "multi_query_attention": True, "original_rope": True, "pre_seq_len": None}
_DIALECT = ConfigDialect(keys=_KEYS, scales={"rope_theta": 10000.0}, template={
    "architectures": ["ChatGLMModel"], "model_type": "chatglm", **FIXED,
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    **dict.fromkeys(("hidden_size", "num_attention_heads", "tie_word_embeddings")
                    + tuple(_KEYS.values()))})


def _inv_freq(shape: ModelShape, dtype: torch.dtype) -> torch.Tensor:
    """ChatGLM's RotaryEmbedding.inv_freq, computed as its __init__ does (in the model dtype).
    Its forward recomputes the angles and reads only this buffer's dtype and device."""
    dim = shape.attention.head_dim // 2
    return 1.0 / (10000 ** (torch.arange(0, dim, 2).to(dtype=dtype) / dim))


FAMILY = Family(
    # ChatGLMConfig's own defaults differ from ChatGLM3's for the keys required present.
    settings=FamilySettings("chatglm3", ("chatglm",), "ChatGLMModel", None, qkv_bias=True,
                            required=FIXED, rotary_percent=0.5, rotary_interleaved=True,
                            dialect=_DIALECT, required_keys={
                                key: "ChatGLMConfig's default for it is not ChatGLM3's"
                                for key in ("multi_query_attention", "add_qkv_bias")}),
    mapping=WeightMapping(
        layer=(
            Copy("input_layernorm.weight", "input_layernorm.weight"),
            PackedQKV("self_attention.linear_qkv.weight", "self_attention.query_key_value.weight"),
            PackedQKV("self_attention.linear_qkv.bias", "self_attention.query_key_value.bias"),
            Copy("self_attention.linear_proj.weight", "self_attention.dense.weight"),
            Copy("pre_mlp_layernorm.weight", "post_attention_layernorm.weight"),
            Copy("mlp.linear_fc1.weight", "mlp.dense_h_to_4h.weight"),  # already [gate; up]
            Copy("mlp.linear_fc2.weight", "mlp.dense_4h_to_h.weight"),
        ),
        embedding="transformer.embedding.word_embeddings.weight",
        final_norm="transformer.encoder.final_layernorm.weight",
        lm_head="transformer.output_layer.weight", layer_prefix="transformer.encoder.layers.{i}.",
        buffers=(Buffer("transformer.rotary_pos_emb.inv_freq", _inv_freq),)),
    template="chatglm3",
    sizes={"6b": Size(28, 4096, 13696, 32, 65024, 8192, Layout(
        tp=2, pp=1, micro_batch=1, global_batch=128), query_groups=2, head_dim=128)},
    notes="ChatGLM3-6B (ChatGLM2-6B is the same model).")

"""Bloom: ALiBi, LayerNorms with biases (one on the embeddings too) and a biased GELU MLP four
times the hidden size; its config.json spells the llama keys its own way."""
from __future__ import annotations

from typing import Tuple

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Copy
from modellink.models.config_dialects import ConfigDialect
from modellink.models.families.base import LLAMA_FIELDS, Family, FamilySettings, Layout, Size

_DIALECT = ConfigDialect(
    keys={"num_hidden_layers": "n_layer", "num_attention_heads": "n_head",
          "rms_norm_eps": "layer_norm_epsilon", "intermediate_size": "hidden_size"},
    scales={"intermediate_size": 4},
    template={"architectures": ["BloomForCausalLM"], "model_type": "bloom",
              "apply_residual_connection_post_layernorm": False, "slow_but_exact": False,
              **dict.fromkeys(("n_layer", "n_head", "hidden_size", "layer_norm_epsilon",
                               "vocab_size", "tie_word_embeddings"))})
_FIELDS = (LLAMA_FIELDS[0], LLAMA_FIELDS[1], LLAMA_FIELDS[3], LLAMA_FIELDS[5])
_FLAGS = ("--normalization", "LayerNorm", "--position-embedding-type", "alibi",
          "--attention-dropout", "0", "--hidden-dropout", "0")
_ARGS = {"normalization": "LayerNorm", "swiglu": False, "position_embedding_type": "alibi",
         "add_bias_linear": True}


def _biased(mg: str, hf: str) -> Tuple[Copy, Copy]:
    return Copy(f"{mg}.weight", f"{hf}.weight"), Copy(f"{mg}.bias", f"{hf}.bias")


FAMILY = Family(
    settings=FamilySettings("bloom", ("bloom",), "BloomForCausalLM", "BloomConfig",
                            fields=_FIELDS, fixed_flags=_FLAGS,
                            features=("openai_gelu", "embed_layernorm"), checked_args=_ARGS,
                            dialect=_DIALECT, defaults={"tie_word_embeddings": True},
                            seq_length=2048,
                            required={"apply_residual_connection_post_layernorm": False,
                                      "slow_but_exact": False}),
    # query_key_value is per head [q; k; v], megatron-core's layout without GQA.
    mapping=WeightMapping(
        layer=(_biased("input_layernorm", "input_layernorm")
               + _biased("self_attention.linear_qkv", "self_attention.query_key_value")
               + _biased("self_attention.linear_proj", "self_attention.dense")
               + _biased("pre_mlp_layernorm", "post_attention_layernorm")
               + _biased("mlp.linear_fc1", "mlp.dense_h_to_4h")
               + _biased("mlp.linear_fc2", "mlp.dense_4h_to_h")),
        embedding="transformer.word_embeddings.weight", final_norm="transformer.ln_f.weight",
        layer_prefix="transformer.h.{i}.",
        embedding_extra=_biased("embedding.word_embeddings_layernorm",
                                "transformer.word_embeddings_layernorm"),
        final_extra=(Copy("decoder.final_layernorm.bias", "transformer.ln_f.bias"),)),
    template="default",
    sizes={
        "7b": Size(30, 4096, 16384, 32, 250880, 2048, Layout(
            tp=8, pp=1, micro_batch=1, global_batch=512), tied=True),
        "176b": Size(70, 14336, 57344, 112, 250880, 2048, Layout(
            tp=8, pp=10, micro_batch=1, global_batch=1024, recompute="full"), tied=True),
    },
    notes="BLOOM (7B1 and 176B); ffn is always 4 x hidden.")

"""--rope-scaling-type llama3|yarn give Hugging Face transformers' frequencies and attention factor,
and the flags reach the model (megatron-core's RoPE with the scaled frequencies)."""
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from modellink.arguments import ArgumentError, parse_args
from modellink.models.gpt import rope_scaling_from_args, transformer_config_from_args
from modellink.ops.rope_scaling import scaled_inv_freq, yarn_attention_factor
from test_arguments import BASE

ROPE = ["--position-embedding-type", "rope", "--rotary-base", "500000"]


def _hf(rope_parameters: dict):
    config = LlamaConfig(hidden_size=512, num_attention_heads=4, max_position_embeddings=32768,
                         rope_parameters={"rope_theta": 500000.0, **rope_parameters})
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, "cpu")


def test_llama3_matches_transformers():
    args = parse_args(BASE + ROPE + ["--rope-scaling-type", "llama3", "--rope-scaling-factor",
                                     "8", "--low-freq-factor", "1", "--high-freq-factor", "4",
                                     "--original-max-position-embeddings", "8192"])
    ours = scaled_inv_freq(128, 500000.0, rope_scaling_from_args(args))
    want, _ = _hf({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.testing.assert_close(ours, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mscale, mscale_all_dim", [(1.0, 0.0), (0.707, 0.707), (1.0, 0.8)])
def test_yarn_matches_transformers(mscale, mscale_all_dim):
    args = parse_args(BASE + ROPE + [
        "--rope-scaling-type", "yarn", "--rope-scaling-factor", "4",
        "--rope-scaling-original-max-position-embeddings", "4096",
        "--rope-scaling-beta-fast", "32", "--rope-scaling-beta-slow", "1",
        "--rope-scaling-mscale", str(mscale), "--rope-scaling-mscale-all-dim",
        str(mscale_all_dim)])
    scaling = rope_scaling_from_args(args)
    want, factor = _hf({"rope_type": "yarn", "factor": 4.0,
                        "original_max_position_embeddings": 4096, "beta_fast": 32,
                        "beta_slow": 1, "mscale": mscale, "mscale_all_dim": mscale_all_dim})
    torch.testing.assert_close(scaled_inv_freq(128, 500000.0, scaling), want, rtol=1e-6, atol=0)
    assert yarn_attention_factor(scaling) == pytest.approx(factor)
    # megatron-core's attention reads the factor from the config; it must agree.
    from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import (
        _yarn_get_concentration_factor_from_config,
    )

    config = transformer_config_from_args(args, "cpu")
    assert _yarn_get_concentration_factor_from_config(config) == pytest.approx(factor)


def test_defaults_and_errors():
    scaling = rope_scaling_from_args(parse_args(BASE + ROPE + ["--use-rope-scaling"]))
    assert (scaling.kind, scaling.factor, scaling.original_max_positions,
            scaling.low_freq_factor, scaling.high_freq_factor) == ("llama3", 8.0, 8192, 1.0, 4.0)
    with pytest.raises(ArgumentError, match="--original-max-position-embeddings"):
        parse_args(BASE + ROPE + ["--rope-scaling-type", "yarn"])
    with pytest.raises(ArgumentError, match="--position-embedding-type rope"):
        parse_args(BASE + ["--rope-scaling-type", "llama3"])

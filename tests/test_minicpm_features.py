"""MiniCPM's scaling flags (--scale-emb, --dim-model-base, --scale-depth): the model built with
them computes MiniCPM's forward, written out below over the same weights without them, and
combinations they cannot take are refused with one line."""
import math

import pytest
import torch

from conftest import TINY_LLAMA
from modellink.arguments import ArgumentError, parse_args
from modellink.models.gpt import build_model_chunks, transformer_config_from_args
from modellink.models.init import init_layout_independent

MINICPM = ["--scale-emb", "12", "--dim-model-base", "16", "--scale-depth", "1.4"]


def _model(flags):
    args = parse_args(TINY_LLAMA + flags + ["--train-iters", "1"], world_size=1)
    args.device = "cpu"
    config = transformer_config_from_args(args, "cpu")
    (model,) = build_model_chunks(args, config)
    init_layout_independent([model], config, args.seed)
    return model.eval()


def _minicpm_forward(plain, tokens):
    """MiniCPM's modeling code: embeddings x scale_emb, each sub-block's output x scale_depth /
    sqrt(layers) before its residual add, the final hidden states / (hidden / dim_model_base)
    before the head."""
    layers = plain.decoder.layers
    hidden = plain.embedding.word_embeddings(tokens).transpose(0, 1) * 12
    rotary = plain.rotary_pos_emb(tokens.shape[1])
    branch = 1.4 / math.sqrt(len(layers))
    for layer in layers:
        attention, _ = layer.self_attention(layer.input_layernorm(hidden), attention_mask=None,
                                            rotary_pos_emb=rotary)
        hidden = hidden + attention * branch
        mlp, _ = layer.mlp(layer.pre_mlp_layernorm(hidden))
        hidden = hidden + mlp * branch
    hidden = plain.decoder.final_layernorm(hidden) / (64 / 16)
    logits, _ = plain.output_layer(hidden)
    return logits.transpose(0, 1)


def test_minicpm_scaling_is_minicpms_forward(one_rank):
    ours = _model(MINICPM)
    plain = _model([])
    plain.load_state_dict(ours.state_dict())  # the flags add no parameters
    tokens = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand_as(tokens)
    with torch.no_grad():
        got = ours(tokens, positions, None)
        want = _minicpm_forward(plain, tokens)
        without = plain(tokens, positions, None)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-5 * scale
    assert (got - without).abs().max().item() > 1e-2 * scale


@pytest.mark.parametrize("flags,needle", [
    (["--scale-emb", "0"], "--scale-emb must be > 0"),
    (["--dim-model-base", "-256"], "--dim-model-base must be > 0"),
    (["--scale-depth", "0"], "--scale-depth must be > 0"),
    (["--scale-emb", "12", "--input-embeds-norm"], "both scale the word embeddings"),
    (["--scale-depth", "1.4", "--post-norm"], "whose norms would undo it"),
])
def test_bad_minicpm_flags_give_one_line_error(flags, needle):
    with pytest.raises(ArgumentError, match=needle) as err:
        parse_args(TINY_LLAMA + flags, world_size=1)
    assert "\n" not in str(err.value)

"""Conversion memory, measured: a Hugging Face checkpoint is read one layer at a time and a
Megatron checkpoint is held one pipeline stage at a time, in both directions, so the peak
resident memory of a conversion is about one stage's weights, not the model's.

An 8-layer Llama of 10 MiB layers (fp32) converts at PP=4 (two layers a stage) and back, in a
fresh process (tests/convert_memory_probe.py) that reports each conversion's peak resident
memory above where it started. PP=1, where the one stage is the whole model, shows the
measurement sees a converter that holds everything.
"""
import json
import os
import subprocess
import sys
from typing import Dict, Tuple

import pytest
import torch
import transformers
from safetensors.torch import save_file

from conftest import ROOT

LAYERS, HIDDEN, FFN, VOCAB = 8, 512, 1024, 1024
FLOAT = 4
LAYER_BYTES = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * FFN + 2 * HIDDEN) * FLOAT
EMBEDDING_BYTES = VOCAB * HIDDEN * FLOAT
MODEL_BYTES = LAYERS * LAYER_BYTES + 2 * EMBEDDING_BYTES + HIDDEN * FLOAT
# The largest PP=4 stage: two layers and the embedding (or the output layer and final norm).
STAGE_BYTES = 2 * LAYER_BYTES + EMBEDDING_BYTES + HIDDEN * FLOAT
MiB = 2**20


def _llama_shapes() -> Dict[str, Tuple[int, ...]]:
    """Written directly: building the transformers model would take longer than the test."""
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}."
        shapes.update({prefix + f"self_attn.{p}_proj.weight": (HIDDEN, HIDDEN) for p in "qkvo"})
        shapes.update({prefix + f"mlp.{p}_proj.weight": (FFN, HIDDEN) for p in ("gate", "up")})
        shapes.update({prefix + "mlp.down_proj.weight": (HIDDEN, FFN),
                       prefix + "input_layernorm.weight": (HIDDEN,),
                       prefix + "post_attention_layernorm.weight": (HIDDEN,)})
    return shapes


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streaming")
    hf = tmp / "hf"
    transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64,
        tie_word_embeddings=False).save_pretrained(hf)
    save_file({name: torch.randn(shape) for name, shape in _llama_shapes().items()},
              str(hf / "model.safetensors"))
    conversions = {
        "hf_to_pp4": dict(load_dir=str(hf), save_dir=str(tmp / "pp4"), load_type="hf",
                          save_type="mg", pp=4),
        "pp4_to_hf": dict(load_dir=str(tmp / "pp4"), save_dir=str(tmp / "back"),
                          load_type="mg", save_type="hf"),
        "hf_to_pp1": dict(load_dir=str(hf), save_dir=str(tmp / "pp1"), load_type="hf",
                          save_type="mg"),
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_=str(64 * 1024))
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "convert_memory_probe.py"),
         json.dumps(list(conversions.values()))],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return dict(zip(conversions, measured))


# One stage held, plus the layer being read from its file map and copied (measured: stage +
# 1.0 layer from HF, + 1.3 layers to HF); a second stage held would add two layers.
BUDGET = STAGE_BYTES + 2 * LAYER_BYTES


def test_hf_to_megatron_holds_one_pipeline_stage(peaks):
    assert peaks["hf_to_pp4"] < BUDGET, \
        f"{peaks['hf_to_pp4'] / MiB:.1f} MiB, one stage is {STAGE_BYTES / MiB:.1f} MiB"


def test_megatron_to_hf_holds_one_pipeline_stage(peaks):
    assert peaks["pp4_to_hf"] < BUDGET, \
        f"{peaks['pp4_to_hf'] / MiB:.1f} MiB, one stage is {STAGE_BYTES / MiB:.1f} MiB"


def test_the_measurement_sees_a_whole_model_held(peaks):
    assert peaks["hf_to_pp1"] > 0.9 * MODEL_BYTES, \
        f"{peaks['hf_to_pp1'] / MiB:.1f} MiB, the model is {MODEL_BYTES / MiB:.1f} MiB"

"""The family registry: every family whole, presets that the training parser accepts, and
tensor-parallel split rules read off the model that agree with the hand list they replaced."""
from __future__ import annotations

import dataclasses
from typing import List, Optional

import pytest

from modellink.arguments import parse_args
from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.mappings import EMBEDDING, FINAL_NORM, OUTPUT
from modellink.checkpoint.rules import at
from modellink.checkpoint.split_rules import split_rules
from modellink.data.templates import TEMPLATES
from modellink.models.families import (
    FAMILIES, Family, FamilyConfigError, Layout, Size, get_family, preset_flags, preset_names,
    training_flags, validate)
from modellink.models.families.presets import size_config
from modellink.models.config_dialects import from_llama_keys
from remote_code_families import REMOTE_FAMILIES
from test_convert_families import CASE_FAMILY, HF_CONFIGS

# The families moved out of families.py; the hand list below covered exactly these.
MOVED = ("llama2", "mistral", "qwen25", "qwen3", "mixtral", "qwen2_moe", "baichuan2", "internlm",
         "internlm2", "chatglm3", "gemma", "gemma2", "bloom")
RUN = ["--micro-batch-size", "1", "--train-iters", "0", "--lr", "0", "--mock-data"]


def test_every_family_has_every_part():
    assert set(MOVED) <= set(FAMILIES)
    validate(FAMILIES)
    for name, family in FAMILIES.items():
        assert family.settings.name == name and family.settings.model_types
        assert family.mapping.layer and family.template in TEMPLATES and family.notes
        assert family.sizes, name


def test_model_types_cover_what_the_converter_accepts():
    """Each converter test case's config.json is accepted by the family it converts with, and
    every moved family is one the converter tests convert."""
    for case, make in HF_CONFIGS.items():
        settings = get_family(CASE_FAMILY.get(case, case))
        assert make().model_type in settings.model_types, case
    remote = {spec.family or case for case, spec in REMOTE_FAMILIES.items()}
    assert set(MOVED) <= {CASE_FAMILY.get(case, case) for case in HF_CONFIGS} | remote


@pytest.mark.parametrize("broken, message", [
    ({"mapping": None}, "model family llama2: no weight mapping"),
    ({"template": "nope"}, "model family llama2: prompt template 'nope' is not in"),
    ({"sizes": {}}, "model family llama2: no sizes"),
    ({"sizes": {"7b": Size(32, 4096, 11008, 32, 32000, 4096, Layout(1, 1, 1, 8),
                           query_groups=5)}},
     "size 7b: heads 32 are not a multiple of query groups 5"),
    ({"sizes": {"7b": Size(30, 4096, 11008, 32, 32000, 4096, Layout(1, 4, 1, 8))}},
     "size 7b: layers 30 do not divide over pp 4"),
])
def test_a_family_missing_a_part_fails_validation(broken, message):
    family = dataclasses.replace(FAMILIES["llama2"], **broken)
    with pytest.raises(FamilyConfigError, match=message):
        validate({**FAMILIES, "llama2": family})


def test_a_model_type_claimed_twice_fails_validation():
    settings = dataclasses.replace(FAMILIES["mistral"].settings, model_types=("llama",))
    mistral = dataclasses.replace(FAMILIES["mistral"], settings=settings)
    with pytest.raises(FamilyConfigError, match="'llama' is claimed by families llama2 and "
                                                "mistral"):
        validate({**FAMILIES, "mistral": mistral})


def test_presets_are_the_published_shapes_and_parse():
    flags = preset_flags("llama2-70b")
    for flag, value in (("--num-layers", "80"), ("--hidden-size", "8192"),
                        ("--ffn-hidden-size", "28672"), ("--num-query-groups", "8")):
        assert flags[flags.index(flag) + 1] == value
    assert "--alibi" not in flags and "alibi" in preset_flags("baichuan2-13b")
    for name in preset_names():
        family_name = next(f for f in FAMILIES if name.startswith(f + "-")
                           and name[len(f) + 1:] in FAMILIES[f].sizes)
        layout = FAMILIES[family_name].sizes[name[len(family_name) + 1:]].layout
        args = parse_args(preset_flags(name) + layout.flags()
                          + ["--train-iters", "0", "--lr", "0", "--mock-data"],
                          world_size=layout.devices)
        assert args.global_batch_size == layout.global_batch


def test_an_unknown_preset_lists_the_valid_ones():
    with pytest.raises(FamilyConfigError, match="unknown model 'llama2-8b'; choose from "
                                                "llama2-7b, llama2-13b"):
        preset_flags("llama2-8b")


def _old_hand_list(name: str) -> Optional[int]:
    """shard.py's split axis before it was read off the model, by name suffix (its gated
    halves: a column-parallel linear_fc1 of a gated family)."""
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight",
                      "linear_fc1.bias", "word_embeddings.weight", "output_layer.weight")):
        return 0
    return None


def _tiny_args(family: Family, variant: bool):
    settings = family.settings.variant.settings if variant else family.settings
    moe = settings.moe
    size = Size(2, 64, 128, 4, 256, 32, Layout(1, 1, 1, 1), query_groups=2,
                experts=4 if moe else None, topk=2 if moe else None, moe_ffn=64, shared_ffn=64)
    config = size_config(settings, size)
    if settings.dialect is not None:
        config = from_llama_keys(settings.dialect, config)
    return settings, parse_args(training_flags(settings, config) + RUN
                                + ["--global-batch-size", "1"], world_size=1)


def _canonical_names(family: Family) -> List[str]:
    mapping = family.mapping
    names = [EMBEDDING, OUTPUT, FINAL_NORM]
    names += [rule.mg for rule in mapping.embedding_extra + mapping.final_extra]
    names += [f"decoder.layers.1.{rule.mg}" for rule in mapping.layer]
    names += [f"decoder.layers.1.{at(rule, e).mg}" for rule in mapping.expert for e in (0, 3)]
    return names


@pytest.mark.parametrize("name", MOVED)
def test_split_rules_from_the_model_equal_the_old_hand_list(name):
    family = FAMILIES[name]
    for variant in (False, True) if family.settings.variant else (False,):
        settings, args = _tiny_args(family, variant)
        rules = split_rules(args)
        for tensor in _canonical_names(family):
            old = _old_hand_list(tensor)
            assert rules.dim(tensor) == old, tensor
            halves = settings.gated and old == 0 and ".linear_fc1." in f".{tensor}"
            assert rules.halves(tensor) == halves, tensor


def test_a_tensor_the_model_does_not_have_raises():
    rules = split_rules(_tiny_args(FAMILIES["llama2"], False)[1])
    for name in ("decoder.layers.0.self_attention.linear_foo.weight",
                 "decoder.layers.0.self_attention.q_layernorm.weight",  # Qwen3's, not LLaMA's
                 "embedding.word_embeddings_layernorm.weight",  # Bloom's
                 "decoder.layers.0.self_attention.linear_qkv.extra"):
        with pytest.raises(ConversionError, match="no tensor-parallel rule"):
            rules.dim(name)

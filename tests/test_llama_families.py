"""The LLaMA line (LLaMA 3, 3.1, 3.2, 3.3), Yi and CodeLlama as families of their own: each
claims its configs among model_type llama by their RoPE settings, llama2 (ModelLink's spelling
for all of them) still converts every one the same way, and the presets are the published
models. Their logits parity and round trips are cases of tests/test_convert_families.py."""
from __future__ import annotations

import dataclasses
import sys

import pytest

from conftest import ROOT
from modellink.arguments import parse_args
from modellink.models.families import (
    FAMILIES, FamilyConfigError, get_family, hf_config_from_args, training_flags, validate)
from modellink.models.families.presets import size_config
from modellink.plan.params import stage_params
from test_convert_families import HF_CONFIGS, RUN_FLAGS

sys.path.insert(0, str(ROOT / "tools"))
import gen_examples  # noqa: E402

LINE = ("llama3", "llama31", "llama32", "llama33", "yi", "codellama")
# Parameters of the published checkpoints, in billions, as their model cards count them.
PUBLISHED = {"llama3-8b": 8.03, "llama3-70b": 70.6, "llama31-8b": 8.03, "llama31-70b": 70.6,
             "llama31-405b": 406, "llama32-1b": 1.24, "llama32-3b": 3.21, "llama33-70b": 70.6,
             "yi-6b": 6.06, "yi-34b": 34.4, "codellama-7b": 6.74, "codellama-13b": 13.0,
             "codellama-34b": 33.7}


def _config(case: str) -> dict:
    return HF_CONFIGS[case]().to_dict()


@pytest.mark.parametrize("case", LINE)
def test_llama2_converts_each_family_s_checkpoints_the_same_way(case):
    """`--model-type-hf llama2` (ModelLink's scripts) and the family's own name give the same
    training flags on import and the same config.json on export."""
    config = _config(case)
    flags = training_flags(get_family(case), config)
    assert training_flags(get_family("llama2"), config) == flags
    args = parse_args(flags + RUN_FLAGS[1:] + ["--global-batch-size", "1"], world_size=1)
    vocab = config["vocab_size"]
    assert hf_config_from_args(get_family("llama2"), args, vocab, config) == \
        hf_config_from_args(get_family(case), args, vocab, config)


@pytest.mark.parametrize("case, claimed_by", [
    ("llama2", ()), ("llama3", ("llama3",)), ("llama31", ("llama31", "llama33")),
    ("llama32", ("llama32",)), ("llama33", ("llama31", "llama33")), ("yi", ("yi",)),
    ("codellama", ("codellama",))])
def test_each_family_claims_only_its_own_configs(case, claimed_by):
    config = _config(case)
    for name in LINE:
        if name in claimed_by:
            training_flags(get_family(name), config)
        else:
            # The hint names the family that claims the config, else llama2, which takes all.
            hint = claimed_by[0] if claimed_by else "llama2"
            with pytest.raises(FamilyConfigError, match=f"--model-type-hf {name} does not "
                                                        f"claim .* use --model-type-hf {hint}$"):
                training_flags(get_family(name), config)


def test_a_second_family_taking_every_llama_config_fails_validation():
    """llama2 takes the model_type llama configs no other family claims; a LLaMA-line family
    that stopped claiming its own would take them too."""
    settings = dataclasses.replace(FAMILIES["llama3"].settings, claims=None)
    llama3 = dataclasses.replace(FAMILIES["llama3"], settings=settings)
    with pytest.raises(FamilyConfigError, match="'llama' is claimed by families llama2 and "
                                                "llama3"):
        validate({**FAMILIES, "llama3": llama3})


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    family_name, size_name = name.split("-")
    family = FAMILIES[family_name]
    script = gen_examples.Script(family, size_name, family.sizes[size_name])
    total = stage_params(gen_examples.plan_args(script, whole=True), 0)
    assert total.dense / 1e9 == pytest.approx(PUBLISHED[name], rel=5e-3)


def test_presets_carry_each_family_s_distinguishing_settings():
    def config(name: str) -> dict:
        family_name, size_name = name.split("-")
        return size_config(FAMILIES[family_name].settings,
                           FAMILIES[family_name].sizes[size_name])
    for name in ("llama31-8b", "llama31-405b", "llama33-70b"):
        assert config(name)["rope_parameters"]["factor"] == 8.0, name
    small = config("llama32-1b")
    assert small["rope_parameters"]["factor"] == 32.0 and small["tie_word_embeddings"]
    assert config("llama3-8b")["max_position_embeddings"] == 8192
    assert config("llama31-8b")["max_position_embeddings"] == 131072
    assert config("yi-6b")["num_key_value_heads"] == 4
    assert config("codellama-7b")["vocab_size"] == 32016

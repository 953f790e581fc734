"""The model families by name, checked whole when the registry is built.

The list of family modules is explicit: a new family is one import and one entry here.
`validate()` refuses a family missing any part, a model_type taken by two families that do not
say which of its configs are theirs (`claims`), a prompt template that does not exist, and a
size whose numbers cannot be laid out as it says.
"""
from __future__ import annotations

from typing import Dict, List

from modellink.checkpoint.mappings import WeightMapping
from modellink.data.templates import TEMPLATES
from modellink.models.families import (
    baichuan, baichuan2, bloom, chatglm3, deepseek2, gemma, gemma2, glm, glm4, internlm, internlm2,
    codellama, llama2, llama3, llama31, llama32, llama33, minicpm, mistral, mixtral, qwen,
    qwen2_moe, qwen3, qwen25, yi)
from modellink.models.families.base import Family, FamilyConfigError, FamilySettings, Size

_MODULES = (llama2, llama3, llama31, llama32, llama33, codellama, yi, mistral, qwen, qwen25, qwen3,
            mixtral, qwen2_moe, baichuan2, baichuan, internlm, internlm2, chatglm3, gemma, gemma2,
            bloom, deepseek2, glm, glm4, minicpm)


def _size_problems(family: Family, name: str, size: Size) -> List[str]:
    layout, where = size.layout, f"size {name}"
    checks = [
        (size.heads % size.groups == 0, f"{where}: heads {size.heads} are not a multiple of "
                                        f"query groups {size.groups}"),
        (size.groups % layout.tp == 0, f"{where}: query groups {size.groups} do not divide "
                                       f"over tp {layout.tp}"),
        (size.ffn % layout.tp == 0, f"{where}: ffn {size.ffn} does not divide over tp "
                                    f"{layout.tp}"),
        (size.layers % layout.pp == 0, f"{where}: layers {size.layers} do not divide over pp "
                                       f"{layout.pp}"),
        (size.head_dim is not None or size.hidden % size.heads == 0,
         f"{where}: hidden {size.hidden} is not a multiple of heads {size.heads}"),
        (layout.global_batch % layout.micro_batch == 0,
         f"{where}: global batch {layout.global_batch} is not a multiple of micro batch "
         f"{layout.micro_batch}"),
        ((size.experts is not None) == family.settings.moe,
         f"{where}: experts {size.experts} for a {'MoE' if family.settings.moe else 'dense'} "
         f"family"),
        (size.variant is False or family.settings.variant is not None,
         f"{where}: marked as the variant of a family without one"),
        (size.template is None or size.template in TEMPLATES,
         f"{where}: prompt template {size.template!r} is not in modellink/data/templates.py"),
    ]
    if size.experts is not None:
        checks += [(size.topk is not None and 0 < size.topk <= size.experts,
                    f"{where}: topk {size.topk} is not between 1 and experts {size.experts}"),
                   (size.experts % layout.ep == 0,
                    f"{where}: experts {size.experts} do not divide over ep {layout.ep}")]
    return [problem for ok, problem in checks if not ok]


def validate(families: Dict[str, Family]) -> None:
    """Every family whole and consistent, or a FamilyConfigError naming the first problem."""
    takers: Dict[str, str] = {}  # model_type -> the family that does not claim (takes any)
    for name, family in families.items():
        problems = []
        if not isinstance(family.settings, FamilySettings) or family.settings.name != name:
            problems.append(f"settings are not FamilySettings named {name!r}")
        if not isinstance(family.mapping, WeightMapping) or not family.mapping.layer:
            problems.append("no weight mapping")
        if family.template not in TEMPLATES:
            problems.append(f"prompt template {family.template!r} is not in "
                            f"modellink/data/templates.py")
        if not family.sizes:
            problems.append("no sizes")
        if not family.notes:
            problems.append("no notes")
        for size_name, size in (family.sizes or {}).items():
            problems += _size_problems(family, size_name, size)
        if problems:
            raise FamilyConfigError(f"model family {name}: {problems[0]}")
        variant = family.settings.variant
        if family.settings.claims is not None:
            continue
        # Families may share a model_type when all but one say which configs are their own
        # (llama2 takes every "llama" config; LLaMA 3.x, Yi and CodeLlama claim theirs).
        for model_type in family.settings.model_types + (
                variant.settings.model_types if variant else ()):
            owner = takers.setdefault(model_type, name)
            if owner != name:
                raise FamilyConfigError(f"model_type {model_type!r} is claimed by families "
                                        f"{owner} and {name}")


def _build() -> Dict[str, Family]:
    families = {module.FAMILY.name: module.FAMILY for module in _MODULES}
    validate(families)
    return families


FAMILIES: Dict[str, Family] = _build()


def get_model_family(name: str) -> Family:
    if name not in FAMILIES:
        raise FamilyConfigError(f"unknown --model-type-hf {name!r}; choose from "
                                f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]


def get_family(name: str) -> FamilySettings:
    """The settings of a family (what conversion and the flags code work from)."""
    return get_model_family(name).settings

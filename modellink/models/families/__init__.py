"""Model families: one file per family (settings, weight mapping, prompt template, sizes), a
registry that checks them whole, and the code that turns a family's settings into flags.

The public names of the former single module are re-exported here, so callers import from
`modellink.models.families` whichever file a name lives in.
"""
from modellink.models.families.base import (
    Family, FamilyConfigError, FamilySettings, Field, Layout, Size, Variant)
from modellink.models.families.hf_config import (
    canonical_config, check_args, check_config, ffn_hidden_size, head_dim, hf_config_from_args,
    num_experts, query_groups, rope_settings, rope_theta, training_flags, variant_for_args,
    variant_for_config)
from modellink.models.families.presets import get_size, preset_flags, preset_names
from modellink.models.families.registry import FAMILIES, get_family, get_model_family, validate

__all__ = [
    "FAMILIES", "Family", "FamilyConfigError", "FamilySettings", "Field", "Layout", "Size",
    "Variant", "canonical_config", "check_args", "check_config", "ffn_hidden_size", "get_family",
    "get_model_family", "get_size", "head_dim", "hf_config_from_args", "num_experts",
    "preset_flags", "preset_names", "query_groups", "rope_settings", "rope_theta",
    "training_flags", "validate", "variant_for_args", "variant_for_config",
]

"""LLaMA 1/2/3.x, CodeLlama and Yi (LlamaForCausalLM checkpoints), and Aquila/Aquila2, whose
remote-code checkpoints have LLaMA's layout and tensor names under a config.json of their own.

llama2 takes every model_type llama config; llama3, llama31, llama32, llama33, codellama and yi
claim theirs by their RoPE settings and convert them the same way (common.llama_settings)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from modellink.models.config_dialects import FILLED, ConfigDialect
from modellink.models.families.base import Family, FamilySettings, Layout, Size, Variant
from modellink.models.families.common import LLAMA_MAPPING, LLAMA_REQUIRED

AQUILA_DIALECT = ConfigDialect(template={
    "architectures": ["AquilaForCausalLM"], "model_type": "aquila", "hidden_act": "silu",
    "auto_map": {"AutoConfig": "configuration_aquila.AquilaConfig",
                 "AutoModelForCausalLM": "modeling_aquila.AquilaForCausalLM"},
    **dict.fromkeys(FILLED + ("num_key_value_heads", "rope_theta"))})
_AQUILA = FamilySettings("llama2", ("aquila",), "AquilaForCausalLM", None,
                         required={"hidden_act": "silu"}, dialect=AQUILA_DIALECT)


def _is_aquila(config: Optional[Dict[str, Any]]) -> bool:
    return (config or {}).get("model_type") in _AQUILA.model_types


FAMILY = Family(
    settings=FamilySettings(
        "llama2", ("llama",), "LlamaForCausalLM", "LlamaConfig", required=LLAMA_REQUIRED,
        rope_scalings=("llama3",),
        variant=Variant(_AQUILA, _is_aquila, lambda args, base: _is_aquila(base))),
    mapping=LLAMA_MAPPING,
    template="llama2",
    sizes={
        "7b": Size(32, 4096, 11008, 32, 32000, 4096, Layout(tp=8, pp=1, micro_batch=1,
                                                             global_batch=256)),
        "13b": Size(40, 5120, 13824, 40, 32000, 4096, Layout(tp=8, pp=1, micro_batch=2,
                                                              global_batch=128)),
        "70b": Size(80, 8192, 28672, 64, 32000, 4096, Layout(
            tp=8, pp=4, micro_batch=1, global_batch=1024, recompute="full"), query_groups=8),
    },
    notes="LLaMA-2 sizes, and Aquila/Aquila2. LLaMA 3.x, CodeLlama and Yi have families of "
          "their own (sizes, template, scripts) and still convert as llama2, ModelLink's "
          "spelling for all of them.")

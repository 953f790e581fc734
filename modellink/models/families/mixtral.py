"""Mixtral: Mistral's attention with every MLP a mixture of SwiGLU experts (top-k routing)."""
from __future__ import annotations

from modellink.checkpoint.mappings import WeightMapping
from modellink.checkpoint.rules import Concat, Copy
from modellink.models.families.base import Family, FamilySettings, Layout, Size
from modellink.models.families.common import ATTENTION

FAMILY = Family(
    settings=FamilySettings("mixtral", ("mixtral",), "MixtralForCausalLM", "MixtralConfig",
                            moe=True, required={"hidden_act": "silu"}),
    mapping=WeightMapping(
        layer=ATTENTION + (Copy("mlp.router.weight", "block_sparse_moe.gate.weight"),),
        expert=(
            Concat("mlp.experts.local_experts.{e}.linear_fc1.weight",
                   ("block_sparse_moe.experts.{e}.w1.weight",
                    "block_sparse_moe.experts.{e}.w3.weight")),
            Copy("mlp.experts.local_experts.{e}.linear_fc2.weight",
                 "block_sparse_moe.experts.{e}.w2.weight"),
        ),
    ),
    template="mixtral",
    sizes={"8x7b": Size(32, 4096, 14336, 32, 32000, 32768, Layout(
        tp=8, pp=4, ep=1, micro_batch=1, global_batch=8), query_groups=8,
        rope_theta=1e6, experts=8, topk=2)},
    notes="Mixtral-8x7B; its config.json has no sliding window in use.")

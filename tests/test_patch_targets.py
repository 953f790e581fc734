"""Every megatron-core symbol we patch, call privately, subclass or match byte for byte exists
with the parameters we rely on, so that upgrading megatron-core is a test run; and a patch
whose target was renamed fails instead of silently adding an attribute nobody reads."""
import ast
import inspect
import runpy
from pathlib import Path

import pytest
from megatron.core.tensor_parallel import layers
from megatron.core.transformer.moe import moe_utils

from modellink.patches import REGISTRY, couplings
from modellink.patches.moe import moe_patches
from modellink.patches.registry import Patch, PatchError, PatchRegistry

ROOT = Path(__file__).resolve().parent.parent
_COPY = "megatron.core.tensor_parallel.layers.copy_to_tensor_model_parallel_region"


def test_every_patch_target_exists_with_the_parameters_we_rely_on():
    assert REGISTRY.problems() == []


def test_private_calls_subclass_overrides_and_formats_match_megatron_core():
    assert couplings.problems() == []


def test_every_subclass_of_a_megatron_core_class_is_listed():
    """Direct subclasses, found in the source: a new one must join SUBCLASSES."""
    found = set()
    for path in sorted((ROOT / "modellink").rglob("*.py")):
        tree = ast.parse(path.read_text())
        upstream = {alias.asname or alias.name for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("megatron")
                    for alias in node.names}
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found |= {f"{module}.{node.name}" for node in ast.walk(tree)
                  if isinstance(node, ast.ClassDef)
                  and any(isinstance(base, ast.Name) and base.id in upstream for base in node.bases)}
    assert found and found <= set(couplings.SUBCLASSES), sorted(found - set(couplings.SUBCLASSES))


def test_a_renamed_target_fails_the_patch_test(monkeypatch):
    """As if megatron-core renamed a function we wrap: the check names it, and applying the
    patch raises instead of creating the old name."""
    monkeypatch.delattr(layers, "copy_to_tensor_model_parallel_region")
    assert REGISTRY.problems() == [f"{_COPY}: does not exist"]
    registry = PatchRegistry()
    registry.register(Patch(_COPY, lambda original: original, "test", wraps=True))
    with pytest.raises(PatchError, match="copy_to_tensor_model_parallel_region does not exist"):
        registry.apply()
    assert not hasattr(layers, "copy_to_tensor_model_parallel_region")


def test_a_renamed_parameter_fails_the_patch_test():
    registry = PatchRegistry()
    registry.register(Patch(_COPY, None, "test", params=("input_", "tp_group")))
    assert registry.problems() == [f"{_COPY}: takes no parameter 'tp_group'"]


def test_te_general_gemm_is_defined_only_where_transformer_engine_is_absent(monkeypatch):
    assert "te_general_gemm" in inspect.getsource(moe_utils)  # the name the router tests
    sentinel = object()
    monkeypatch.setattr(moe_utils, "te_general_gemm", sentinel, raising=False)
    registry = PatchRegistry()
    for patch in moe_patches():
        registry.register(patch)
    registry.apply()
    assert moe_utils.te_general_gemm is sentinel and registry.applied() == []
    monkeypatch.delattr(moe_utils, "te_general_gemm")
    registry.apply()
    assert moe_utils.te_general_gemm is None


def test_listing_shows_patches_overrides_and_formats(capsys):
    runpy.run_module("modellink.patches", run_name="__main__")
    out = capsys.readouterr().out
    for line in ["patches:", "private calls:", "subclass overrides:", "format couplings:",
                 "  [megatron-core] megatron.core.optimizer.distrib_optimizer.DistributedOptimizer"
                 ".load_state_dict: a resumed torch AdamW would share one step tensor across params",
                 "  modellink.models.decoding_layer.DecodingTransformerLayer.forward overrides "
                 "megatron.core.transformer.transformer_layer.TransformerLayer.forward"]:
        assert line in out.splitlines()
    assert "  distributed-optimizer state (distrib_optim.pt): " \
           "modellink/training/checkpoint/optimizer_shards.py <-> " in out

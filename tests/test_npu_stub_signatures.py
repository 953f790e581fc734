"""Every torch_npu call modellink makes fits torch_npu's published signature (names, argument
order, defaults), and the stand-in torch_npu (tests/npu_stub) declares exactly those signatures,
so a stand-in test cannot pass with a call the real library would refuse.

The table follows the torch_npu API reference of CANN 8.0.RC1 (torch_npu for PyTorch 2.1,
Ascend Extension for PyTorch 6.0.RC1): npu_fusion_attention as documented on
hiascend.com ptaoplist_000441, npu_fusion_attention_grad as op-plugin's schema declares it; the
others as the stand-in's docstrings cite them."""
import ast
import importlib.util
import inspect
from pathlib import Path

import pytest

from conftest import ROOT

TORCH_NPU_VERSION = "CANN 8.0.RC1, torch_npu for PyTorch 2.1"
POS, KW = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
# name -> [(parameter, kind, default)]; inspect.Parameter.empty = required.
REQUIRED = inspect.Parameter.empty
SIGNATURES = {
    "npu_fusion_attention": [
        ("query", POS, REQUIRED), ("key", POS, REQUIRED), ("value", POS, REQUIRED),
        ("head_num", POS, REQUIRED), ("input_layout", POS, REQUIRED), ("pse", POS, None),
        ("padding_mask", POS, None), ("atten_mask", POS, None), ("scale", POS, 1.0),
        ("keep_prob", POS, 1.0), ("pre_tockens", POS, 2147483647),
        ("next_tockens", POS, 2147483647), ("inner_precise", POS, 0), ("prefix", POS, None),
        ("actual_seq_qlen", POS, None), ("actual_seq_kvlen", POS, None),
        ("sparse_mode", POS, 0), ("gen_mask_parallel", POS, True), ("sync", POS, False)],
    "npu_fusion_attention_grad": [
        ("query", POS, REQUIRED), ("key", POS, REQUIRED), ("value", POS, REQUIRED),
        ("dy", POS, REQUIRED), ("head_num", POS, REQUIRED), ("input_layout", POS, REQUIRED),
        ("pse", KW, None), ("padding_mask", KW, None), ("atten_mask", KW, None),
        ("softmax_max", KW, None), ("softmax_sum", KW, None), ("softmax_in", KW, None),
        ("attention_in", KW, None), ("scale_value", KW, 1.0), ("keep_prob", KW, 1.0),
        ("pre_tockens", KW, 2147483647), ("next_tockens", KW, 2147483647),
        ("inner_precise", KW, 0), ("seed", KW, 0), ("offset", KW, 0), ("numels", KW, 0),
        ("prefix", KW, None), ("actual_seq_qlen", KW, None), ("actual_seq_kvlen", KW, None),
        ("sparse_mode", KW, 0), ("gen_mask_parallel", KW, True), ("sync", KW, False)],
    "npu_rms_norm": [("self", POS, REQUIRED), ("gamma", POS, REQUIRED), ("epsilon", POS, 1e-06)],
    "npu_swiglu": [("input", POS, REQUIRED), ("dim", POS, -1)],
    "npu_rotary_mul": [("input", POS, REQUIRED), ("r1", POS, REQUIRED), ("r2", POS, REQUIRED),
                       ("rotary_mode", POS, "half")],
    "npu_all_gather_base_mm": [
        ("input", POS, REQUIRED), ("x2", POS, REQUIRED), ("hcom", POS, REQUIRED),
        ("world_size", POS, REQUIRED), ("bias", KW, None), ("gather_index", KW, 0),
        ("gather_output", KW, True), ("comm_turn", KW, 0)],
    "npu_mm_reduce_scatter_base": [
        ("input", POS, REQUIRED), ("x2", POS, REQUIRED), ("hcom", POS, REQUIRED),
        ("world_size", POS, REQUIRED), ("reduce_op", KW, "sum"), ("bias", KW, None),
        ("comm_turn", KW, 0)],
}


def _calls():
    """(file:line, function name, positional count, keyword names) of each torch_npu.X(...)."""
    for path in sorted((ROOT / "modellink").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch_npu"):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                # A `**mapping` (arg None) is checked by the test of what fills it.
                yield (where, node.func.attr, len(node.args),
                       {k.arg for k in node.keywords if k.arg is not None})


CALLS = list(_calls())


def test_modellink_calls_torch_npu():
    assert {name for _, name, _, _ in CALLS} == set(SIGNATURES)


@pytest.mark.parametrize("where, name, positional, keywords", CALLS, ids=[c[0] for c in CALLS])
def test_call_fits_the_published_signature(where, name, positional, keywords):
    params = SIGNATURES[name]
    positional_names = [p for p, kind, _ in params if kind == POS]
    assert positional <= len(positional_names), f"{where}: too many positional arguments"
    given = set(positional_names[:positional]) | keywords
    assert not keywords - {p for p, _, _ in params}, f"{where}: unknown {keywords}"
    assert not set(positional_names[:positional]) & keywords, f"{where}: passed twice"
    missing = {p for p, _, default in params if default is REQUIRED} - given
    assert not missing, f"{where}: {name} misses {missing}"


def test_stand_in_declares_the_published_signatures():
    spec = importlib.util.spec_from_file_location(
        "torch_npu_stand_in", Path(ROOT / "tests" / "npu_stub" / "torch_npu" / "__init__.py"))
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    for name, params in SIGNATURES.items():
        declared = [(p.name, p.kind, p.default)
                    for p in inspect.signature(getattr(stub, name)).parameters.values()]
        assert declared == params, name


@pytest.mark.parametrize("sparse_mode", [0, 2, 3])
def test_attention_mask_arguments_are_published_parameters(sparse_mode):
    """attention_npu.py hands mask_arguments' dict to npu_fusion_attention as **keywords."""
    import torch

    from modellink.ops.attention_npu import mask_arguments

    names = {p for p, _, _ in SIGNATURES["npu_fusion_attention"]}
    for mask in (None, torch.zeros(1, 1, 8, 8, dtype=torch.bool)):
        args = mask_arguments(sparse_mode, 65536, 0, None, 8, 8, mask, torch.device("cpu"), {})
        assert set(args) <= names, set(args) - names

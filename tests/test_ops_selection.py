"""Which implementation each flag selects per device, what the start-up log says about it, and
the one-line errors for flag combinations the operators cannot honour."""
import pytest
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.mlp import MLP

from modellink.arguments import ArgumentError, parse_args
from modellink.models.layer_spec import (
    DenseBiasMC2RowParallelLinear, DenseBiasRowParallelLinear, decoder_layer_spec,
    operator_paths)
from modellink.ops.mc2 import MC2ColumnParallelLinear, MC2RowParallelLinear
from modellink.ops.mlp import ActivationMLP
from modellink.ops.rotary_attention import RotarySelfAttention
from test_arguments import BASE

LLAMA = BASE + ["--normalization", "RMSNorm", "--swiglu", "--position-embedding-type", "rope"]
FUSED = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
         "--use-fused-rotary-pos-emb", "--use-mc2", "--tensor-model-parallel-size", "2",
         "--sequence-parallel"]


def test_log_names_each_device_path():
    args = parse_args(LLAMA + FUSED, world_size=2)
    assert operator_paths(args, "cpu") == (
        "attention: torch SDPA, rmsnorm: rmsnorm autograd function, "
        "swiglu: swiglu autograd function, rotary: rotary autograd function, "
        "mc2: megatron-core sequence-parallel all-gather/reduce-scatter + matmul (no MC2 "
        "kernels), recompute: off")
    npu = operator_paths(args, "npu")
    for kernel in ("npu_fusion_attention [SBH, sparse mode 0]", "npu_rms_norm", "npu_swiglu",
                   "npu_rotary_mul", "npu_all_gather_base_mm / npu_mm_reduce_scatter_base"):
        assert kernel in npu
    cuda = operator_paths(args, "cuda")
    for kernel in ("torch fused rms_norm", "megatron compiled swiglu"):
        assert kernel in cuda


def test_log_without_flags_and_with_window_and_recompute():
    args = parse_args(LLAMA + ["--sliding-window", "8", "--recompute-granularity", "full",
                               "--recompute-method", "block", "--recompute-num-layers", "2",
                               "--recompute-activation-function"])
    assert operator_paths(args, "cpu") == (
        "attention: reference math (sliding window 8), rmsnorm: reference, swiglu: reference, "
        "rotary: reference (megatron-core), mc2: off, "
        "recompute: full (block, 2 layers), activation function")


def test_npu_layer_spec_uses_npu_operators():
    args = parse_args(LLAMA + FUSED, world_size=2)
    args.device = "npu"
    spec = decoder_layer_spec(args).submodules
    attention = spec.self_attention
    assert attention.module is RotarySelfAttention
    assert attention.params["rotary"].name == "npu_rotary_mul"
    assert attention.submodules.core_attention.keywords["settings"].path == "npu"
    assert attention.submodules.linear_qkv is MC2ColumnParallelLinear
    assert attention.submodules.linear_proj is MC2RowParallelLinear
    assert spec.mlp.module is ActivationMLP and spec.mlp.params["activation"].__name__ == \
        "swiglu_npu"
    assert spec.input_layernorm.params["impl"].name == "npu_rms_norm"


@pytest.mark.parametrize("device,linear", [("cpu", DenseBiasRowParallelLinear),
                                           ("npu", DenseBiasMC2RowParallelLinear)])
def test_dense_bias_keeps_the_device_projection(device, linear):
    """--add-dense-bias changes only the bias: MC2's fused projection stays on the NPU."""
    args = parse_args(LLAMA + FUSED + ["--add-dense-bias"], world_size=2)
    args.device = device
    assert decoder_layer_spec(args).submodules.self_attention.submodules.linear_proj is linear


def test_cpu_layer_spec_without_flags_is_megatron_core():
    args = parse_args(LLAMA)
    args.device = "cpu"
    spec = decoder_layer_spec(args).submodules
    assert spec.self_attention.submodules.core_attention is DotProductAttention
    assert spec.self_attention.submodules.linear_qkv is ColumnParallelLinear
    assert spec.mlp.module is MLP


@pytest.mark.parametrize("extra, world, needle", [
    (["--next-tockens", "1"], 1, "--next-tockens 1"),
    (["--sliding-window", "4", "--sparse-mode", "2"], 1, "--sparse-mode 0 or 4"),
    (["--sparse-mode", "6"], 1, "--sparse-mode"),
    (["--sliding-window", "0"], 1, "--sliding-window must be >= 1"),
    (["--recompute-activation-function", "--recompute-granularity", "full",
      "--recompute-method", "uniform"], 1, "--recompute-activation-function"),
    (["--recompute-activation-function", "--num-experts", "2"], 1, "moe_act"),
    (["--recompute-modules", "mlp"], 1, "--recompute-granularity selective"),
])
def test_bad_combinations_are_one_line_errors(extra, world, needle):
    with pytest.raises(ArgumentError) as info:
        parse_args(LLAMA + extra, world_size=world)
    assert needle in str(info.value) and "\n" not in str(info.value)

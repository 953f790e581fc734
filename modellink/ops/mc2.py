"""`--use-mc2` on Ascend: tensor-parallel linears with sequence parallelism whose communication
is fused into the matmul (torch_npu "MC2" kernels), as ModelLink's ascend_turbo layers do.

Column-parallel (QKV, fc1): forward all-gathers the sequence-sharded input inside the matmul
(npu_all_gather_base_mm); backward re-gathers the input (not kept, to save memory) while it
computes the input gradient, whose reduce-scatter overlaps the weight-gradient matmul.
Row-parallel (proj, fc2): forward reduce-scatters inside the matmul (npu_mm_reduce_scatter_base);
backward all-gathers the output gradient inside the input-gradient matmul.

Documented signatures (torch_npu API reference; 2-D fp16/bf16 inputs, k in [256, 65535),
world size 2, 4 or 8, bias unsupported so it is added outside):
    npu_all_gather_base_mm(input, x2, hcom, world_size, *, bias=None, gather_index=0,
                           gather_output=True, comm_turn=0) -> (output, gather_out)
    npu_mm_reduce_scatter_base(input, x2, hcom, world_size, *, reduce_op='sum', bias=None,
                               comm_turn=0) -> output
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from modellink.argument_errors import ArgumentError


def hccl_comm_name(group: dist.ProcessGroup) -> str:
    """The HCCL communicator handle the MC2 kernels address the group by."""
    return group._get_backend(torch.device("npu")).get_hccl_comm_name(dist.get_rank())


class _AllGatherMatmul(torch.autograd.Function):
    """[s/tp, b, h] sequence shard -> [s, b, out/tp]."""

    @staticmethod
    def forward(ctx: object, input_: torch.Tensor, weight: torch.Tensor,
                group: dist.ProcessGroup) -> torch.Tensor:
        import torch_npu

        ctx.save_for_backward(input_, weight)
        ctx.group = group
        world = dist.get_world_size(group)
        x = input_.reshape(-1, input_.shape[-1])
        output, _ = torch_npu.npu_all_gather_base_mm(
            x, weight.t(), hccl_comm_name(group), world, bias=None, gather_index=0,
            gather_output=False, comm_turn=0)
        return output.view(input_.shape[0] * world, input_.shape[1], -1)

    @staticmethod
    def backward(ctx: object, grad_output: torch.Tensor):
        input_, weight = ctx.saved_tensors
        group = ctx.group
        world = dist.get_world_size(group)
        gathered = torch.empty((input_.shape[0] * world,) + tuple(input_.shape[1:]),
                               dtype=input_.dtype, device=input_.device)
        gather = dist.all_gather_into_tensor(gathered, input_.contiguous(), group=group,
                                             async_op=True)
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input_full = grad.matmul(weight).view(grad_output.shape[0], grad_output.shape[1], -1)
        grad_input = torch.empty_like(input_)
        gather.wait()
        scatter = dist.reduce_scatter_tensor(grad_input, grad_input_full, group=group,
                                             async_op=True)
        grad_weight = grad.t().matmul(gathered.reshape(-1, gathered.shape[-1]))
        scatter.wait()
        return grad_input, grad_weight, None


class _MatmulReduceScatter(torch.autograd.Function):
    """[s, b, in/tp] -> [s/tp, b, h] summed over the tensor-parallel group."""

    @staticmethod
    def forward(ctx: object, input_: torch.Tensor, weight: torch.Tensor,
                group: dist.ProcessGroup) -> torch.Tensor:
        import torch_npu

        ctx.save_for_backward(input_, weight)
        ctx.group = group
        world = dist.get_world_size(group)
        x = input_.reshape(-1, input_.shape[-1])
        output = torch_npu.npu_mm_reduce_scatter_base(
            x, weight.t(), hccl_comm_name(group), world, reduce_op="sum", bias=None, comm_turn=0)
        return output.view(input_.shape[0] // world, input_.shape[1], -1)

    @staticmethod
    def backward(ctx: object, grad_output: torch.Tensor):
        import torch_npu

        input_, weight = ctx.saved_tensors
        group = ctx.group
        grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input, gathered_grad = torch_npu.npu_all_gather_base_mm(
            grad, weight, hccl_comm_name(group), dist.get_world_size(group), bias=None,
            gather_index=0, gather_output=True, comm_turn=0)
        grad_weight = gathered_grad.t().matmul(input_.reshape(-1, input_.shape[-1]))
        return grad_input.view_as(input_), grad_weight, None


def _require_sequence_parallel(layer: torch.nn.Module) -> None:
    if not layer.sequence_parallel:
        raise ArgumentError("--use-mc2 needs --sequence-parallel with tensor parallelism")


class MC2ColumnParallelLinear(ColumnParallelLinear):
    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        _require_sequence_parallel(self)
        if self.gather_output or runtime_gather_output:
            raise ValueError("MC2 column-parallel linears keep their output sharded")
        output = _AllGatherMatmul.apply(input_, self.weight if weight is None else weight,
                                        self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            output = output + self.bias
        return output, self.bias if self.skip_bias_add else None


class MC2RowParallelLinear(RowParallelLinear):
    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        _require_sequence_parallel(self)
        output = _MatmulReduceScatter.apply(input_, self.weight, self.tp_group)
        if self.bias is not None and not self.skip_bias_add:
            output = output + self.bias
        return output, self.bias if self.skip_bias_add else None

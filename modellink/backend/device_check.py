"""A CPU-run check that every tensor handed to a collective would live on the accelerator.

NCCL and HCCL refuse host tensors, but on the CPU backend gloo serves every group and takes
anything, so a collective on a host tensor passes every CPU test and stops the first GPU run.
With `MODELLINK_DEVICE_CHECK=1` (tests/conftest.py sets it for the whole suite) the CPU
backend keeps the two kinds of tensor apart:

- a host tensor is made by a factory given no device or the string "cpu", by `torch.from_numpy`,
  `.cpu()` or `.to("cpu")`; it becomes a `HostTensor`, and every op's result on host tensors
  alone stays one (its `__torch_function__`), so derived tensors are caught too;
- a device tensor is everything else: `device="cuda"`, an integer, `torch.cuda.current_device()`
  (which returns the `CURRENT_DEVICE` marker here), `.cuda()`, `.to("cuda")`; parameters count
  as device tensors because every backend but the CPU moves the model to the device.

Each collective of a `ProcessGroup` (which megatron-core's captured aliases of
`all_gather_into_tensor` and friends reach too) raises `HostTensorError`, naming the call site,
when it gets a host tensor, unless the group was created for host tensors on purpose
(`new_group(backend="gloo")`, as megatron-core's gloo groups). Object collectives are exempt:
torch moves their payload through the current device itself. Only host tensors pay for the
check (one Python call per op); device tensors, the hot path, are plain tensors.
A `torch.device("cpu")` object is ambiguous here (`x.device` of a device tensor is one), so it
marks nothing.
"""
from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Set

import torch
import typing_extensions
from torch.utils._pytree import tree_flatten, tree_map

if TYPE_CHECKING:
    from modellink.patches.registry import Patch

ENV = "MODELLINK_DEVICE_CHECK"
GROUP = "cpu-backend"

# ProcessGroup methods that take tensors; barrier and the rest carry none of the caller's.
_COLLECTIVES = (
    "allreduce", "allreduce_coalesced", "broadcast", "reduce", "allgather", "allgather_coalesced",
    "allgather_into_tensor_coalesced", "all_gather_single", "all_gather_single_coalesced",
    "_allgather_base", "reduce_scatter", "reduce_scatter_single",
    "reduce_scatter_single_coalesced", "reduce_scatter_tensor_coalesced", "_reduce_scatter_base",
    "alltoall", "alltoall_base", "all_to_all_single", "gather", "scatter", "send", "recv",
    "recv_anysource",
)
_OBJECT_COLLECTIVES = (
    "all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list",
    "send_object_list", "recv_object_list",
)
# Frames a reader would not cite: torch itself, this module, and typing_extensions' @deprecated
# wrapper around torch's legacy collectives.
_NOT_CALL_SITES = (os.path.dirname(torch.__file__) + os.sep, __file__, typing_extensions.__file__)
_REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class HostTensorError(RuntimeError):
    """A collective on a device group got a host tensor: NCCL or HCCL would refuse it."""


class _RedirectedDevice(str):
    """"cpu" to torch, but recognisably what `torch.cuda.current_device()` returned."""


CURRENT_DEVICE = _RedirectedDevice("cpu")


class HostTensor(torch.Tensor):
    """A tensor that would live in host memory on a GPU or NPU run."""

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            result = func(*args, **kwargs)
        # An op that also reads a device tensor runs on the device (CPU scalars may join it).
        if any(torch.is_tensor(t) and not isinstance(t, HostTensor)
               for t in tree_flatten((args, kwargs))[0]):
            return result
        return tree_map(_as_host, result)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Saved as the plain tensor it marks: checkpoints hold what a device run's hold, and
        # load with weights_only (which refuses unknown tensor subclasses).
        return _as_device(self).__reduce_ex__(protocol)


def _as_host(value: Any) -> Any:
    return value.as_subclass(HostTensor) if type(value) is torch.Tensor else value


def _as_device(value: Any) -> Any:
    return value.as_subclass(torch.Tensor) if type(value) is HostTensor else value


def _names_host(device: Any) -> bool:
    return type(device) is str and device.startswith("cpu")


def _names_accelerator(device: Any) -> bool:
    if isinstance(device, (int, _RedirectedDevice)):
        return True
    if isinstance(device, str):
        return device.startswith(("cuda", "npu"))
    return isinstance(device, torch.device) and device.type in ("cuda", "npu")


def marking_factory(name: str, redirected: Callable) -> Callable:
    """Wrap a CPU-redirected factory so that what it makes for the host is a HostTensor."""
    follows_input = name.endswith("_like") or name in ("tensor", "as_tensor")

    @functools.wraps(redirected)
    def factory(*args: Any, **kwargs: Any) -> Any:
        device = kwargs.get("device")
        tensor = redirected(*args, **kwargs)
        if device is None and follows_input and args and torch.is_tensor(args[0]):
            return _as_host(tensor) if isinstance(args[0], HostTensor) else tensor
        return _as_host(tensor) if device is None or _names_host(device) else tensor

    return factory


def _target_device(args: Any, kwargs: Any) -> Any:
    if "device" in kwargs:
        return kwargs["device"]
    if args and not isinstance(args[0], torch.dtype):
        return args[0]
    return None


def marking_to(redirected: Callable) -> Callable:
    @functools.wraps(redirected)
    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        target = _target_device(args, kwargs)
        result = redirected(self, *args, **kwargs)
        if _names_accelerator(target):
            return _as_device(result)
        if _names_host(target):
            return _as_host(result)
        return result

    return to


def device_cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return _as_device(self)


def _host_cpu(original: Callable) -> Callable:
    @functools.wraps(original)
    def cpu(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _as_host(original(self, *args, **kwargs))

    return cpu


def _host_from_numpy(original: Callable) -> Callable:
    @functools.wraps(original)
    def from_numpy(array: Any) -> torch.Tensor:
        return _as_host(original(array))

    return from_numpy


def _device_parameter(original: Callable) -> Callable:
    @functools.wraps(original)
    def new(cls: type, data: Any = None, requires_grad: bool = True) -> Any:
        return original(cls, _as_device(data), requires_grad)

    return staticmethod(new)


_host_groups: Set[str] = set()
_exempt_depth = 0


def _recording_new_group(original: Callable) -> Callable:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def new_group(*args: Any, **kwargs: Any) -> Any:
        group = original(*args, **kwargs)
        backend = signature.bind(*args, **kwargs).arguments.get("backend")
        if isinstance(group, torch.distributed.ProcessGroup) and isinstance(backend, str) and (
                backend.lower() == "gloo" or "cpu:" in backend.lower()):
            _host_groups.add(group.group_name)
        return group

    return new_group


def _exempt(original: Callable) -> Callable:
    # Object collectives serialise through tensors on the group's object device: torch picks the
    # current CUDA/NPU device itself where the backend needs it.
    @functools.wraps(original)
    def object_collective(*args: Any, **kwargs: Any) -> Any:
        global _exempt_depth
        _exempt_depth += 1
        try:
            return original(*args, **kwargs)
        finally:
            _exempt_depth -= 1

    return object_collective


def _call_site() -> str:
    """file:line of the first caller outside torch and this module, as a reader would cite it."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_NOT_CALL_SITES):
        frame = frame.f_back
    if frame is None:
        return "an unknown call site"
    path = frame.f_code.co_filename
    if "site-packages" + os.sep in path:
        path = path.split("site-packages" + os.sep, 1)[1]
    elif path.startswith(_REPO_DIR):
        path = os.path.relpath(path, _REPO_DIR)
    return f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"


def _host_tensors(args: Any, kwargs: Any) -> Iterator[torch.Tensor]:
    return (t for t in tree_flatten((args, kwargs))[0] if isinstance(t, HostTensor))


def _checked_collective(name: str) -> Callable[[Callable], Callable]:
    def wrap(original: Callable) -> Callable:
        @functools.wraps(original)
        def collective(group: Any, *args: Any, **kwargs: Any) -> Any:
            if not _exempt_depth and group.group_name not in _host_groups:
                host = next(_host_tensors(args, kwargs), None)
                if host is not None:
                    raise HostTensorError(
                        f"{ENV}: {name} on process group {group.group_name} ({group.group_desc}), "
                        f"a device group, "
                        f"got a host tensor {tuple(host.shape)} {host.dtype} at {_call_site()}; "
                        f"NCCL/HCCL refuse host tensors: create it on "
                        f"torch.cuda.current_device(), or use a group made with backend='gloo'")
            return original(group, *args, **kwargs)

        return collective

    return wrap


def device_check_patches() -> List[Patch]:
    """The check's patches beyond the CPU backend's own (whose factories, `.to`, `.cuda` and
    `current_device` take their checking form from `cpu_patches`)."""
    # Imported here: the registry's package imports the CPU backend, which imports this module.
    from modellink.patches.registry import Patch

    why = f"{ENV}: collectives on device groups must refuse host tensors, as NCCL/HCCL do"
    why_mark = f"{ENV}: tensors made for the host are marked HostTensor"
    process_group = "torch.distributed.ProcessGroup"
    patches = [Patch(f"{process_group}.{name}", _checked_collective(name), why, GROUP, wraps=True)
               for name in _COLLECTIVES]
    patches += [Patch(f"{module}.{name}", _exempt, why, GROUP, wraps=True)
                for module in ("torch.distributed", "torch.distributed.distributed_c10d")
                for name in _OBJECT_COLLECTIVES]
    patches += [
        Patch(f"{module}.new_group", _recording_new_group,
              f"{ENV}: groups made with backend='gloo' serve host tensors", GROUP, wraps=True)
        for module in ("torch.distributed", "torch.distributed.distributed_c10d")
    ]
    patches += [
        Patch("torch.Tensor.cpu", _host_cpu, why_mark, GROUP, wraps=True),
        Patch("torch.from_numpy", _host_from_numpy, why_mark, GROUP, wraps=True),
        Patch("torch.nn.parameter.Parameter.__new__", _device_parameter,
              f"{ENV}: parameters are device tensors (the model is moved to the device)", GROUP,
              wraps=True),
    ]
    return patches

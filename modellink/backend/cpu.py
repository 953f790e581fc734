"""CPU backend: run megatron-core's CUDA-assuming code on the CPU.

megatron-core calls `torch.cuda.*`, passes `device="cuda"` to factories, moves tensors with
`.cuda()` and checks `tensor.type() == "torch.cuda.FloatTensor"`. Ascend solves the same
problem by redirecting CUDA to the NPU; this module redirects it to the CPU. We patch the
few entry points instead of installing a TorchFunctionMode because a mode intercepts every
tensor op in Python, which costs measurable time on the CPU hot path.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, List

import torch

from modellink.backend import device_check
from modellink.patches.registry import Patch

GROUP = "cpu-backend"

_FACTORIES = (
    "empty", "zeros", "ones", "full", "rand", "randn", "randint", "randperm", "arange",
    "linspace", "eye", "tensor", "as_tensor", "empty_strided", "empty_like", "zeros_like",
    "ones_like", "full_like", "rand_like", "randn_like",
)


def _to_cpu_device(device: Any) -> Any:
    if isinstance(device, int):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


def _factory(original: Callable) -> Callable:
    @functools.wraps(original)
    def factory(*args: Any, **kwargs: Any) -> Any:
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        kwargs.pop("pin_memory", None)  # pinning needs an accelerator
        return original(*args, **kwargs)

    return factory


def _tensor_to(original: Callable) -> Callable:
    @functools.wraps(original)
    def to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args:
            args = (_to_cpu_device(args[0]),) + args[1:]
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        return original(self, *args, **kwargs)

    return to


def _tensor_type(original: Callable) -> Callable:
    # The distributed optimizer and grad clipping accept only "torch.cuda.*Tensor" types.
    @functools.wraps(original)
    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return original(self, *args, **kwargs)
        name = original(self)
        return name.replace("torch.", "torch.cuda.", 1) if self.device.type == "cpu" else name

    return type_


def _return_self() -> Callable[..., torch.Tensor]:
    return lambda self, *args, **kwargs: self


def _noop() -> Callable[..., None]:
    # A fresh function per target: torch._dynamo keys its rules by function object and
    # rejects one object standing for two torch functions.
    return lambda *args, **kwargs: None


class _CompletedEvent:
    """CPU work is synchronous, so every event has already happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _SynchronousStream:
    """Stand-in for torch.cuda.Stream: megatron-core's MoE dispatcher overlaps copies on a
    side stream; on the CPU there is nothing to overlap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _CompletedEvent:
        return event or _CompletedEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_DEFAULT_STREAM = _SynchronousStream()


def _host_copy(original: Callable) -> Callable:
    # megatron-core's MoE dispatcher turns split sizes into numpy arrays only when they come
    # from a CUDA tensor; all_to_all_single rejects the CPU tensors it would otherwise pass.
    @functools.wraps(original)
    def to_host(tensor: Any, as_numpy: bool = False, record_stream: bool = False) -> Any:
        if as_numpy and torch.is_tensor(tensor) and tensor.device.type == "cpu":
            return tensor.detach().numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    return to_host


def _cpu_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(state)


def _manual_seed(seed: int) -> None:
    # megatron-core seeds its RNG tracker through torch.cuda.manual_seed between saving and
    # restoring the state, so seeding the CPU generator gives each tracker its own stream.
    torch.default_generator.manual_seed(seed)


def cpu_patches() -> List[Patch]:
    """Every redirection the CPU backend installs, in registry form.

    Apply after importing megatron.core: torch._dynamo builds its tables of torch functions on
    first import and must see the originals.
    """
    why_device = "megatron-core hard-codes CUDA devices; on the CPU backend they mean the CPU"
    why_stream = "megatron-core overlaps work on CUDA streams; CPU work is synchronous"
    why_rng = "megatron-core keeps its model-parallel RNG streams in the CUDA generator"
    check = device_check.enabled()

    def factory(name: str) -> Callable[[Callable], Callable]:
        if check:
            return lambda original: device_check.marking_factory(name, _factory(original))
        return _factory

    def tensor_to(original: Callable) -> Callable:
        redirected = _tensor_to(original)
        return device_check.marking_to(redirected) if check else redirected

    patches = [
        Patch(f"torch.{name}", factory(name), why_device, GROUP, wraps=True)
        for name in _FACTORIES
    ]
    patches += [
        Patch("torch.Tensor.to", tensor_to, why_device, GROUP, wraps=True),
        Patch("torch.Tensor.cuda", device_check.device_cuda if check else _return_self(),
              why_device, GROUP),
        Patch("torch.Tensor.pin_memory", _return_self(), "pinning needs an accelerator", GROUP),
        Patch("torch.Tensor.type", _tensor_type,
              "distributed optimizer and grad clipping assert torch.cuda tensor types", GROUP,
              wraps=True),
        # "cpu" to torch; the device check tells it from a literal "cpu" (a host tensor).
        Patch("torch.cuda.current_device", lambda: device_check.CURRENT_DEVICE, why_device,
              GROUP),
        Patch("torch.cuda.set_device", _noop(), why_device, GROUP),
        Patch("torch.cuda.device_count", lambda: 1, why_device, GROUP),
        Patch("torch.cuda.synchronize", _noop(), "CPU ops are synchronous", GROUP),
        Patch("torch.cuda.Stream", _SynchronousStream, why_stream, GROUP),
        Patch("torch.cuda.Event", _CompletedEvent, why_stream, GROUP),
        Patch("torch.cuda.current_stream", lambda device=None: _DEFAULT_STREAM, why_stream, GROUP),
        Patch("torch.cuda.stream", lambda stream=None: contextlib.nullcontext(), why_stream,
              GROUP),
        Patch("torch.cuda.nvtx.range_push", _noop(), "no NVTX without CUDA", GROUP),
        Patch("torch.cuda.nvtx.range_pop", _noop(), "no NVTX without CUDA", GROUP),
        Patch("torch.cuda.manual_seed", _manual_seed, why_rng, GROUP),
        Patch("torch.cuda.get_rng_state", _cpu_rng_state, why_rng, GROUP),
        Patch("torch.cuda.set_rng_state", _set_cpu_rng_state, why_rng, GROUP),
        Patch("torch.cuda.random.get_rng_state", _cpu_rng_state, why_rng, GROUP),
        Patch("megatron.core.tensor_parallel.random._get_cuda_rng_state", _cpu_rng_state,
              why_rng, GROUP),
        Patch("megatron.core.tensor_parallel.random._set_cuda_rng_state", _set_cpu_rng_state,
              why_rng, GROUP, params=("new_state",)),
        Patch("megatron.core.transformer.moe.token_dispatcher.maybe_move_tensor_to_cpu",
              _host_copy, "all-to-all split sizes must reach torch.distributed as host lists",
              GROUP, wraps=True, params=("tensor", "as_numpy", "record_stream")),
    ]
    return patches + (device_check.device_check_patches() if check else [])

"""CPU backend: run megatron-core's CUDA-assuming code on the CPU.

megatron-core calls `torch.cuda.*`, passes `device="cuda"` to factories, moves tensors with
`.cuda()` and checks `tensor.type() == "torch.cuda.FloatTensor"`. Ascend solves the same
problem by redirecting CUDA to the NPU; this module redirects it to the CPU. We patch the
few entry points instead of installing a TorchFunctionMode because a mode intercepts every
tensor op in Python, which costs measurable time on the CPU hot path.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, List

import torch

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
    why_rng = "megatron-core keeps its model-parallel RNG streams in the CUDA generator"
    patches = [
        Patch(f"torch.{name}", _factory, why_device, GROUP, wraps=True) for name in _FACTORIES
    ]
    patches += [
        Patch("torch.Tensor.to", _tensor_to, why_device, GROUP, wraps=True),
        Patch("torch.Tensor.cuda", _return_self(), why_device, GROUP),
        Patch("torch.Tensor.pin_memory", _return_self(), "pinning needs an accelerator", GROUP),
        Patch("torch.Tensor.type", _tensor_type,
              "distributed optimizer and grad clipping assert torch.cuda tensor types", GROUP,
              wraps=True),
        Patch("torch.cuda.current_device", lambda: "cpu", why_device, GROUP),
        Patch("torch.cuda.set_device", _noop(), why_device, GROUP),
        Patch("torch.cuda.device_count", lambda: 1, why_device, GROUP),
        Patch("torch.cuda.synchronize", _noop(), "CPU ops are synchronous", GROUP),
        Patch("torch.cuda.nvtx.range_push", _noop(), "no NVTX without CUDA", GROUP),
        Patch("torch.cuda.nvtx.range_pop", _noop(), "no NVTX without CUDA", GROUP),
        Patch("torch.cuda.manual_seed", _manual_seed, why_rng, GROUP),
        Patch("torch.cuda.get_rng_state", _cpu_rng_state, why_rng, GROUP),
        Patch("torch.cuda.set_rng_state", _set_cpu_rng_state, why_rng, GROUP),
        Patch("torch.cuda.random.get_rng_state", _cpu_rng_state, why_rng, GROUP),
        Patch("megatron.core.tensor_parallel.random._get_cuda_rng_state", _cpu_rng_state,
              why_rng, GROUP),
        Patch("megatron.core.tensor_parallel.random._set_cuda_rng_state", _set_cpu_rng_state,
              why_rng, GROUP),
    ]
    return patches

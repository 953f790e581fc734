"""Load `.pt` checkpoint files without running code pickled into them.

A pickle can name any callable, so `torch.load(weights_only=False)` on a downloaded Megatron
checkpoint runs whatever its author put there. Every checkpoint read in modellink goes through
`load_pt` instead: `weights_only=True` rebuilds tensors and plain containers only, plus the few
types Megatron checkpoints legitimately hold, allowed here by name: the run's
`argparse.Namespace` (with the megatron-core enums Megatron-LM stores in it, such as
`model_type` and `attention_backend`), numpy's RNG state and Transformer Engine's extra
state. A file naming anything else is refused before any of it is built, with an error that
names the file and the type.
"""
from __future__ import annotations

import argparse
import enum
import io
import pickle
import re
from typing import Any, Callable, List, Tuple, Type, Union

import numpy
import torch
from megatron.core import enums as core_enums
from megatron.core.transformer import enums as transformer_enums


def _enums(module: Any) -> List[type]:
    return [value for value in vars(module).values()
            if isinstance(value, type) and issubclass(value, enum.Enum)
            and value.__module__ == module.__name__]


def _numpy_rng_types() -> List[Union[Callable, Tuple[Callable, str]]]:
    """What `numpy.random.get_state()` (a uint32 array) pickles to. The array rebuilder is
    taken from what this numpy pickles with; files written under numpy 1.x name it
    `numpy.core...` (2.x: `numpy._core...`), so that name is allowed for it too."""
    reconstruct = numpy.ndarray.__reduce__(numpy.zeros(1))[0]
    return [numpy.ndarray, numpy.dtype, type(numpy.dtype("uint32")), reconstruct,
            (reconstruct, "numpy.core.multiarray._reconstruct")]


# io.BytesIO: Megatron-LM checkpoints of Transformer Engine layers hold their `_extra_state`
# (fp8 metadata) as one; it only wraps bytes.
TRUSTED_TYPES: List[Union[Callable, Tuple[Callable, str]]] = (
    [argparse.Namespace, io.BytesIO] + _enums(core_enums) + _enums(transformer_enums)
    + _numpy_rng_types()
)


def _refused_types(path: str) -> List[str]:
    """The globals in `path` that are not allowed (static disassembly: nothing is run)."""
    try:
        with torch.serialization.safe_globals(TRUSTED_TYPES):
            return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint, or too damaged to disassemble
        return []


def load_pt(path: str, error: Type[Exception], mmap: bool = False) -> Any:
    """`torch.load` of `path` onto the CPU with only `TRUSTED_TYPES` beyond tensors and
    containers. Failures raise `error` with a one-line message naming `path`."""
    try:
        with torch.serialization.safe_globals(TRUSTED_TYPES):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message opens with advice to load unsafely; the reason follows this marker.
        reason = str(exc).partition("WeightsUnpickler error:")[2].strip()
        refused = _refused_types(path) or re.findall(r"Unsupported global: GLOBAL (\S+)", reason)
        if refused:
            raise error(f"{path}: unsupported type {', '.join(refused)} in the pickle; it was "
                        f"not loaded, since unpickling it could run code (only tensors, "
                        f"containers, argparse.Namespace, megatron-core enums, numpy RNG state "
                        f"and BytesIO load)") from None
        raise error(f"corrupt checkpoint file {path}: "
                    f"{reason.splitlines()[0] if reason else _first_line(exc)}") from None
    except Exception as exc:
        raise error(f"corrupt checkpoint file {path}: {type(exc).__name__}: "
                    f"{_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__

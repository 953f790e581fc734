"""Streaming safetensors: read tensors as views of memory-mapped files, write size-capped
shards with an index.

Reads happen in sessions (one per group): a session maps each file it touches and the
tensors view those pages, so converting copies each byte at most once; a map is released
when the session's last view is freed, so the pages of groups already written leave RSS.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List

import torch

from modellink.checkpoint.errors import ConversionError

INDEX_FILENAME = "model.safetensors.index.json"
SINGLE_FILENAME = "model.safetensors"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
           "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}

_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class _Entry:
    path: str
    dtype: torch.dtype
    shape: tuple
    start: int
    end: int


def _header(path: str) -> Dict[str, _Entry]:
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ConversionError(f"unreadable safetensors file {path}: {exc}") from None
    base = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        entries[name] = _Entry(path, _DTYPES[info["dtype"]], tuple(info["shape"]),
                               base + begin, base + end)
    return entries


class SafetensorsReader:
    """All tensors of a HF checkpoint directory (single file or index + shards)."""

    def __init__(self, directory: str) -> None:
        index = os.path.join(directory, INDEX_FILENAME)
        if os.path.isfile(index):
            with open(index) as handle:
                files = sorted(set(json.load(handle)["weight_map"].values()))
        elif os.path.isfile(os.path.join(directory, SINGLE_FILENAME)):
            files = [SINGLE_FILENAME]
        else:
            raise ConversionError(f"--load-dir {directory} has no {SINGLE_FILENAME} or "
                                  f"{INDEX_FILENAME} (only safetensors checkpoints are read)")
        missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise ConversionError(f"checkpoint shard missing: {os.path.join(directory, missing[0])}"
                                  f" ({len(missing)} of {len(files)} listed in the index)")
        self.entries: Dict[str, _Entry] = {}
        for name in files:
            self.entries.update(_header(os.path.join(directory, name)))

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name].dtype

    @contextmanager
    def session(self) -> Iterator[Callable[[str], torch.Tensor]]:
        maps: Dict[str, mmap.mmap] = {}

        def read(name: str) -> torch.Tensor:
            entry = self.entries[name]
            if entry.path not in maps:
                with open(entry.path, "rb") as handle:
                    maps[entry.path] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            mapped = maps[entry.path]
            if entry.end > len(mapped):
                raise ConversionError(f"truncated safetensors file {entry.path} at {name}")
            if entry.end == entry.start:
                return torch.empty(entry.shape, dtype=entry.dtype)
            with warnings.catch_warnings():  # read-only pages: we never write through views
                warnings.simplefilter("ignore", UserWarning)
                flat = torch.frombuffer(mapped, dtype=torch.uint8, count=entry.end - entry.start,
                                        offset=entry.start)
            return flat.view(entry.dtype).reshape(entry.shape)

        yield read


class ShardedSafetensorsWriter:
    """Streams tensors into size-capped safetensors shards as they arrive.

    Each shard reserves `header_bytes` up front, takes tensor bytes straight from tensor
    memory, and gets its header (padded with spaces, which the format allows) on close, so no
    shard is ever buffered whole.
    """

    def __init__(self, directory: str, max_shard_bytes: int, header_bytes: int) -> None:
        self.directory = directory
        self.max_shard_bytes = max_shard_bytes
        self.header_bytes = -(-header_bytes // 8) * 8  # keeps tensor data 8-byte aligned
        self.shards: List[List[str]] = []
        self.total_bytes = 0
        self._handle = None
        self._header: Dict[str, dict] = {}
        self._offset = 0

    def add(self, tensors: Dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            size = tensor.numel() * tensor.element_size()
            if self._handle is not None and self._offset and \
                    self._offset + size > self.max_shard_bytes:
                self._finish()
            if self._handle is None:
                self._open()
            self._handle.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))
            self._header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                                  "data_offsets": [self._offset, self._offset + size]}
            self._offset += size
            self.total_bytes += size

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, f"shard-{index:05d}.tmp")

    def _open(self) -> None:
        self._handle = open(self._path(len(self.shards)), "wb")
        self._handle.write(b"\0" * (8 + self.header_bytes))
        self._header, self._offset = {}, 0

    def _finish(self) -> None:
        header = dict(self._header, __metadata__={"format": "pt"})
        encoded = json.dumps(header, separators=(",", ":")).encode()
        if len(encoded) > self.header_bytes:
            raise RuntimeError(f"safetensors header needs {len(encoded)} bytes, "
                               f"{self.header_bytes} reserved")
        self._handle.seek(0)
        self._handle.write(struct.pack("<Q", self.header_bytes))
        self._handle.write(encoded.ljust(self.header_bytes, b" "))
        self._handle.close()
        self.shards.append(list(self._header))
        self._handle = None

    def close(self) -> None:
        """Name the shards as transformers does: one file, or model-0000i-of-0000n + index."""
        if self._handle is None:
            self._open()
        self._finish()
        count = len(self.shards)
        if count == 1:
            os.rename(self._path(0), os.path.join(self.directory, SINGLE_FILENAME))
            return
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.rename(self._path(i), os.path.join(self.directory, final))
            weight_map.update({name: final for name in names})
        with open(os.path.join(self.directory, INDEX_FILENAME), "w") as handle:
            json.dump({"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
                      handle, indent=2, sort_keys=True)


def header_bytes_for(names: List[str]) -> int:
    """An upper bound on the JSON header of a shard holding any subset of `names`."""
    return sum(len(name) + 96 for name in names) + 64

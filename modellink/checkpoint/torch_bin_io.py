"""pytorch_model*.bin checkpoints (Baichuan2 and InternLM2 publish only these), read with the
same interface as SafetensorsReader.

`load_pt` (torch.load with mmap=True and weights_only=True) maps each file's storages instead
of reading them and runs no pickled code; a session loads each file it touches once, and its tensors view
the mapped pages, as safetensors reads do.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Union

import torch

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.safe_load import load_pt
from modellink.checkpoint.safetensors_io import INDEX_FILENAME, SINGLE_FILENAME, SafetensorsReader

BIN_INDEX_FILENAME = "pytorch_model.bin.index.json"
BIN_SINGLE_FILENAME = "pytorch_model.bin"


def _load(path: str) -> Dict[str, torch.Tensor]:
    return load_pt(path, ConversionError, mmap=True)


class TorchBinReader:
    def __init__(self, directory: str) -> None:
        index = os.path.join(directory, BIN_INDEX_FILENAME)
        if os.path.isfile(index):
            with open(index) as handle:
                weight_map = json.load(handle)["weight_map"]
        else:
            names = _load(os.path.join(directory, BIN_SINGLE_FILENAME))
            weight_map = dict.fromkeys(names, BIN_SINGLE_FILENAME)
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise ConversionError(f"checkpoint shard missing: {os.path.join(directory, missing[0])}"
                                  f" ({len(missing)} of {len(files)} listed in the index)")
        # Tensor name -> file, as SafetensorsReader.entries (membership is what callers test).
        self.entries: Dict[str, str] = {name: os.path.join(directory, file)
                                        for name, file in weight_map.items()}

    def dtype(self, name: str) -> torch.dtype:
        with self.session() as read:
            return read(name).dtype

    @contextmanager
    def session(self) -> Iterator[Callable[[str], torch.Tensor]]:
        loaded: Dict[str, Dict[str, torch.Tensor]] = {}

        def read(name: str) -> torch.Tensor:
            path = self.entries[name]
            if path not in loaded:
                loaded[path] = _load(path)
            if name not in loaded[path]:
                raise ConversionError(f"{path} does not hold {name}, which its index lists")
            return loaded[path][name]

        yield read


def open_checkpoint(directory: str) -> Union[SafetensorsReader, TorchBinReader]:
    """safetensors where the directory has them, else pytorch_model*.bin."""
    if any(os.path.isfile(os.path.join(directory, name))
           for name in (INDEX_FILENAME, SINGLE_FILENAME)):
        return SafetensorsReader(directory)
    if any(os.path.isfile(os.path.join(directory, name))
           for name in (BIN_INDEX_FILENAME, BIN_SINGLE_FILENAME)):
        return TorchBinReader(directory)
    raise ConversionError(f"--load-dir {directory} has no {SINGLE_FILENAME}, {INDEX_FILENAME}, "
                          f"{BIN_SINGLE_FILENAME} or {BIN_INDEX_FILENAME}")

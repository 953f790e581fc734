"""Write a Hugging Face checkpoint: config.json, size-capped safetensors shards (+ index),
tokenizer files; `AutoModelForCausalLM.from_pretrained` loads it unchanged."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional

import torch
import transformers
from tqdm import tqdm

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.mappings import (
    Group, ModelShape, WeightMapping, from_canonical, groups, hf_names)
from modellink.checkpoint.safetensors_io import ShardedSafetensorsWriter, header_bytes_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
                   "merges.txt", "*.tiktoken", "chat_template.jinja")


def tokenizer_files(path: str) -> list:
    """The tokenizer files to copy from `--tokenizer-model` (a file or a directory)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ConversionError(f"--tokenizer-model {path} does not exist")
    found = [os.path.join(path, name) for name in sorted(os.listdir(path))
             if any(fnmatch.fnmatch(name, pattern) for pattern in TOKENIZER_FILES)]
    if not found:
        raise ConversionError(f"--tokenizer-model {path} holds no tokenizer files "
                              f"({', '.join(TOKENIZER_FILES[:3])}, ...)")
    return found


def _save_config(config: Dict[str, Any], config_class: Optional[str], dtype: torch.dtype,
                 out_dir: str) -> None:
    if config_class is None:
        # A trust_remote_code family: no config class to go through, and its modeling code
        # (transformers 4.x era) reads the dtype as `torch_dtype`.
        config = dict(config, torch_dtype=str(dtype).removeprefix("torch."))
        with open(os.path.join(out_dir, "config.json"), "w") as handle:
            json.dump(config, handle, indent=2)
            handle.write("\n")
        return
    hf_config = getattr(transformers, config_class).from_dict(config)
    hf_config.dtype = dtype
    hf_config.save_pretrained(out_dir)


def write_hf(read: Callable[[Group], Dict[str, List[torch.Tensor]]], shape: ModelShape,
             mapping: WeightMapping, config: Dict[str, Any], config_class: Optional[str],
             out_dir: str, max_shard_bytes: int, dtype: Optional[torch.dtype],
             tokenizer: Optional[str]) -> None:
    names = [name for group in groups(shape) for name in hf_names(mapping, shape, group)]
    names += [buffer.name for buffer in mapping.buffers]
    writer = ShardedSafetensorsWriter(out_dir, max_shard_bytes, header_bytes_for(names))
    out_dtype = dtype
    for group in tqdm(groups(shape), desc="write huggingface", unit="group", leave=False):
        tensors = from_canonical(mapping, shape, group, read(group))
        for name, tensor in tensors.items():
            out_dtype = out_dtype or tensor.dtype
            tensors[name] = tensor.to(out_dtype)
        writer.add(tensors)
    writer.add({buffer.name: buffer.make(shape, out_dtype) for buffer in mapping.buffers})
    writer.close()
    _save_config(config, config_class, out_dtype, out_dir)
    for path in tokenizer_files(tokenizer) if tokenizer else []:
        shutil.copy2(path, out_dir)

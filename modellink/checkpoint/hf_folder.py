"""Megatron -> HF with `--save-dir` naming the original Hugging Face model folder, as
ModelLink documents it: the converted model goes into `<save-dir>/mg2hg/`, beside copies of
the folder's own non-weight files (tokenizer, generation config, remote code, ...), and the
folder's config.json is the template of the one written. Nothing else in the folder is
touched, so the original weights survive whatever happens."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from typing import Any, Dict, List, Optional

from modellink.checkpoint.errors import ConversionError
from modellink.models.families import (
    FamilySettings, canonical_config, check_config, variant_for_config)
from modellink.user_error import UserError

MG2HG = "mg2hg"
# Weights and their indexes stay behind: the converted ones replace them, and a stale index
# would point transformers at shards that are not there.
_NOT_COPIED = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5",
               "*.msgpack", "*.gguf", "*.onnx", "*.index.json")


def _config_path(save_dir: str) -> str:
    return os.path.join(save_dir, "config.json")


def is_hf_folder(save_dir: str) -> bool:
    """A folder with a config.json is a model folder; an empty or new one is not."""
    return os.path.isfile(_config_path(save_dir))


def folder_config(save_dir: str, settings: FamilySettings) -> Dict[str, Any]:
    """The folder's config.json in the family's canonical (llama-style) keys."""
    path = _config_path(save_dir)
    try:
        with open(path) as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"--save-dir {path} is unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise ConversionError(f"--save-dir {path} is not a JSON object")
    variant = variant_for_config(settings, raw)
    try:
        check_config(variant, raw)
    except UserError as exc:
        raise ConversionError(f"--save-dir {path}: {exc}") from None
    return canonical_config(variant, raw)


def copy_beside(save_dir: str, out_dir: str) -> List[str]:
    """Copy the folder's top-level files that go with the converted weights; their names."""
    names = [name for name in sorted(os.listdir(save_dir))
             if os.path.isfile(os.path.join(save_dir, name))
             and not any(fnmatch.fnmatch(name, pattern) for pattern in _NOT_COPIED)]
    for name in names:
        shutil.copy2(os.path.join(save_dir, name), out_dir)
    return names


def vocab_for_folder(config: Dict[str, Any], known: Optional[int], rows: int,
                     save_dir: str) -> int:
    """The folder's vocabulary, which its tokenizer files were made for, checked against the
    checkpoint: `known` is the unpadded size the checkpoint records (None if it records
    none), `rows` its padded embedding rows."""
    vocab = int(config["vocab_size"])
    if known is not None and known != vocab:
        raise ConversionError(f"--save-dir {_config_path(save_dir)} has vocab_size {vocab} but "
                              f"--load-dir holds a {known}-token model: point --save-dir at the "
                              f"model it came from")
    if vocab > rows:
        raise ConversionError(f"--save-dir {_config_path(save_dir)} has vocab_size {vocab}, more "
                              f"than the {rows} embedding rows in --load-dir")
    return vocab

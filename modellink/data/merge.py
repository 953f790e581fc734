"""--merge-group-keys: concatenate already preprocessed datasets, ModelLink style.

For every key, all ``*.bin``/``*.idx`` pairs in the --input folder whose name contains the key
are appended in name order into ``<output-prefix>_<key>.bin/.idx``.
"""

import os
from typing import List, Sequence

from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path, get_idx_path

from modellink.argument_errors import ArgumentError
from modellink.data.writer import DatasetWriter, check_outputs_free


def _group(input_dir: str, key: str, exclude: Sequence[str]) -> List[str]:
    prefixes = set()
    for name in os.listdir(input_dir):
        stem, ext = os.path.splitext(name)
        if ext not in (".bin", ".idx") or key not in stem or ".tmp-" in stem:
            continue
        prefix = os.path.join(input_dir, stem)
        if os.path.abspath(prefix) in exclude:
            continue
        if not (os.path.isfile(get_bin_path(prefix)) and os.path.isfile(get_idx_path(prefix))):
            raise ArgumentError(f"{prefix}: has no matching {'.idx' if ext == '.bin' else '.bin'} file")
        prefixes.add(prefix)
    if not prefixes:
        raise ArgumentError(f"--merge-group-keys: no .bin/.idx pair in {input_dir} contains {key!r}")
    return sorted(prefixes)


def merge_datasets(input_dir: str, output_prefix: str, keys: Sequence[str], overwrite: bool = False) -> List[str]:
    """Writes one merged dataset per key; returns the output prefixes."""
    if not os.path.isdir(input_dir):
        raise ArgumentError(f"--input {input_dir}: --merge-group-keys needs a folder")
    outputs = [f"{output_prefix}_{key}" for key in keys]
    check_outputs_free(outputs, overwrite)
    exclude = [os.path.abspath(p) for p in outputs]
    groups = {key: _group(input_dir, key, exclude) for key in keys}
    for key, output in zip(keys, outputs):
        dtypes = {IndexedDataset(p).index.dtype for p in groups[key]}
        if len(dtypes) != 1:
            raise ArgumentError(f"--merge-group-keys {key!r}: inputs have different token dtypes {sorted(map(str, dtypes))}")
        with DatasetWriter({key: output}, {key: dtypes.pop()}) as writer:
            builder = writer.builders[key]
            for prefix in groups[key]:
                builder.add_index(prefix)
            writer.finalize()
            writer.publish()
    return outputs

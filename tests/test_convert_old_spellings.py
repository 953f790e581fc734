"""convert_ckpt.py's older `--loader <family>_hf|megatron --saver megatron|mg` spellings mean
exactly what the `--load-model-type/--save-model-type/--model-type-hf` ones do."""
import pytest

from modellink.checkpoint.cli import build_parser, options_from_args
from modellink.checkpoint.errors import ConversionError


def _options(tmp_path, *flags):
    dirs = ["--load-dir", str(tmp_path / "in"), "--save-dir", str(tmp_path / "out")]
    return options_from_args(build_parser().parse_args(dirs + list(flags)))


@pytest.mark.parametrize("old,new", [
    (["--loader", "llama2_hf", "--saver", "megatron"],
     ["--load-model-type", "hf", "--save-model-type", "mg", "--model-type-hf", "llama2"]),
    (["--loader", "qwen_hf", "--saver", "mg"],
     ["--load-model-type", "hf", "--save-model-type", "mg", "--model-type-hf", "qwen"]),
    (["--loader", "megatron", "--saver", "megatron", "--target-tensor-parallel-size", "2"],
     ["--load-model-type", "mg", "--save-model-type", "mg", "--target-tensor-parallel-size", "2"]),
    (["--loader", "mg", "--saver", "save_huggingface_llama"],
     ["--load-model-type", "mg", "--save-model-type", "hf"]),
])
def test_old_spelling_gives_the_same_conversion(tmp_path, old, new):
    assert _options(tmp_path, *old) == _options(tmp_path, *new)


def test_unknown_old_loader_is_one_clear_error(tmp_path):
    with pytest.raises(ConversionError, match="unknown --loader 'llama2'"):
        _options(tmp_path, "--loader", "llama2")

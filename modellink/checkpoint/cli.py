"""ModelLink's convert_ckpt.py command line, including the older --loader/--saver spellings."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Optional, Sequence

from modellink.checkpoint.convert import DTYPES, ConvertOptions, convert
from modellink.checkpoint.errors import ConversionError
from modellink.models.families import FAMILIES
from modellink.user_error import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage text
        raise ConversionError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description="Convert checkpoints: Hugging Face <-> Megatron (any layout)",
                allow_abbrev=False)
    p.add_argument("--model-type", default="GPT", choices=["GPT"])
    p.add_argument("--load-model-type", default=None, choices=["hf", "mg"])
    p.add_argument("--save-model-type", default=None,
                   help="mg | hf (also megatron, huggingface, save_huggingface_<family>)")
    p.add_argument("--loader", default=None, help="older spelling: <family>_hf | megatron | mg")
    p.add_argument("--saver", default=None, help="older spelling: megatron | mg")
    p.add_argument("--load-dir", required=True)
    p.add_argument("--save-dir", required=True,
                   help="output folder; for Megatron -> HF, the original Hugging Face model "
                        "folder gets the converted model in <save-dir>/mg2hg/")
    p.add_argument("--model-type-hf", default=None,
                   help=f"model family: {', '.join(sorted(FAMILIES))} (default llama2)")
    p.add_argument("--target-tensor-parallel-size", type=int, default=1)
    p.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    p.add_argument("--target-expert-parallel-size", type=int, default=1)
    p.add_argument("--num-layer-list", default=None, help="layers per pipeline stage, e.g. 6,10")
    p.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None)
    p.add_argument("--tokenizer-model", default=None,
                   help="tokenizer file or directory, checked on import, copied on export")
    p.add_argument("--params-dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--make-vocab-size-divisible-by", type=int, default=1,
                   help="pad the vocabulary to a multiple of this x TP (default 1, as ModelLink's "
                        "converter and scripts)")
    p.add_argument("--add-qkv-bias", action="store_true")
    p.add_argument("--add-dense-bias", action="store_true")
    p.add_argument("--use-mcore-models", action="store_true",
                   help="accepted for script compatibility: megatron-core models are the only ones")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors shard size on export")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --save-dir")
    p.add_argument("--orm", action="store_true",
                   help="a reward model: a Megatron checkpoint trained with trainer.py --stage "
                        "rm <-> a Hugging Face *ForSequenceClassification with one label")
    g = p.add_argument_group("LoRA merge (Megatron base: --load-model-type mg)")
    g.add_argument("--lora-load", default=None,
                   help="adapter checkpoint of a LoRA run over --load-dir, merged into the "
                        "weights written")
    g.add_argument("--lora-r", type=int, default=None,
                   help="checked against the adapters (default: as they were trained)")
    g.add_argument("--lora-alpha", type=int, default=None,
                   help="checked against the adapters (default: as they were trained)")
    g.add_argument("--lora-target-modules", nargs="*", default=None,
                   help="checked against the adapters (default: as they were trained)")
    return p


def _size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?B?)", text.strip().upper())
    if not match:
        raise ConversionError(f"--max-shard-size {text!r}: expected e.g. 5GB, 500MB or bytes")
    scale = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30,
             "GB": 2**30}[match.group(2)]
    if int(match.group(1)) == 0:
        raise ConversionError(f"--max-shard-size {text!r} must be more than 0 bytes")
    return int(match.group(1)) * scale


def _load_type(args: argparse.Namespace) -> str:
    if args.load_model_type:
        return args.load_model_type
    if args.loader is None:
        raise ConversionError("say what --load-dir holds: --load-model-type hf|mg")
    if args.loader in ("megatron", "mg", "mg_mcore"):
        return "mg"
    if args.loader.endswith("_hf"):
        return "hf"
    raise ConversionError(f"unknown --loader {args.loader!r}: use <family>_hf or megatron")


def _save_type(args: argparse.Namespace, load_type: str) -> str:
    value = args.save_model_type or args.saver
    if value is None:
        return "hf" if load_type == "mg" else "mg"
    if value in ("mg", "megatron", "mg_mcore"):
        return "mg"
    if value in ("hf", "huggingface") or value.startswith("save_huggingface"):
        return "hf"
    raise ConversionError(f"unknown --save-model-type {value!r}: use mg or hf")


def _family(args: argparse.Namespace) -> str:
    if args.model_type_hf == "llama2" and args.add_qkv_bias:
        # ModelLink's spelling for Qwen1.5/2/2.5: LLaMA's layout with q/k/v biases.
        return "qwen25"
    if args.model_type_hf:
        return args.model_type_hf
    if args.loader and args.loader.endswith("_hf"):
        return args.loader[:-3]
    return "llama2"


def options_from_args(args: argparse.Namespace) -> ConvertOptions:
    load_type = _load_type(args)
    lora_flags = [flag for flag, value in (("--lora-r", args.lora_r),
                                           ("--lora-alpha", args.lora_alpha),
                                           ("--lora-target-modules", args.lora_target_modules))
                  if value is not None]
    if args.lora_load is None and lora_flags:
        raise ConversionError(f"{lora_flags[0]} needs --lora-load (the adapters to merge)")
    for flag, value in (("--make-vocab-size-divisible-by", args.make_vocab_size_divisible_by),
                        ("--lora-r", args.lora_r), ("--lora-alpha", args.lora_alpha)):
        if value is not None and value < 1:
            raise ConversionError(f"{flag} must be >= 1, got {value}")
    if args.lora_load is not None and load_type != "mg":
        raise ConversionError("--lora-load merges adapters into a Megatron base: use "
                              "--load-model-type mg")
    layer_list = None
    if args.num_layer_list:
        try:
            layer_list = [int(x) for x in args.num_layer_list.split(",")]
        except ValueError:
            raise ConversionError(f"--num-layer-list must be comma-separated integers, got "
                                  f"{args.num_layer_list!r}") from None
    return ConvertOptions(
        load_dir=args.load_dir, save_dir=args.save_dir, load_type=load_type,
        save_type=_save_type(args, load_type), family=_family(args),
        tp=args.target_tensor_parallel_size, pp=args.target_pipeline_parallel_size,
        ep=args.target_expert_parallel_size, layer_list=layer_list,
        vpp_layers=args.num_layers_per_virtual_pipeline_stage, params_dtype=args.params_dtype,
        tokenizer_model=args.tokenizer_model,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        max_shard_bytes=_size(args.max_shard_size), add_qkv_bias=args.add_qkv_bias,
        add_dense_bias=args.add_dense_bias, overwrite=args.overwrite,
        lora_load=args.lora_load, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_target_modules=args.lora_target_modules, orm=args.orm)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status 0 on success, 2 with one `error: ...` line for bad input."""
    try:
        convert(options_from_args(build_parser().parse_args(argv)))
    except UserError as exc:  # ConversionError and the family / flag checks
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0

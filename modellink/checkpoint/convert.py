"""One conversion, validated up front: HF -> Megatron, Megatron -> HF, Megatron -> Megatron."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import List, Optional, Union

import torch

from modellink.checkpoint.errors import ConversionError
from modellink.checkpoint.hf_folder import (
    MG2HG, copy_beside, folder_config, is_hf_folder, vocab_for_folder)
from modellink.checkpoint.hf_source import HuggingFaceSource
from modellink.checkpoint.hf_writer import tokenizer_files, write_hf
from modellink.checkpoint.layout import ParallelLayout, build_layout
from modellink.checkpoint.lora_merge import LoraMergedSource
from modellink.checkpoint.megatron_args import (
    args_from_hf, model_flags, padded_vocab, resharded_args)
from modellink.checkpoint.megatron_reader import MegatronSource
from modellink.checkpoint.megatron_writer import write_megatron
from modellink.checkpoint.output import atomic_directory, check_save_dir
from modellink.checkpoint.reward import check_megatron_source, classifier_config
from modellink.checkpoint.split_rules import split_rules
from modellink.models.families import (
    ffn_hidden_size, get_family, get_model_family, hf_config_from_args, variant_for_args)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ConvertOptions:
    load_dir: str
    save_dir: str
    load_type: str  # "hf" | "mg"
    save_type: str  # "mg" | "hf"
    family: str = "llama2"
    tp: int = 1
    pp: int = 1
    ep: int = 1
    layer_list: Optional[List[int]] = None
    vpp_layers: Optional[int] = None
    params_dtype: Optional[str] = None
    tokenizer_model: Optional[str] = None
    make_vocab_size_divisible_by: int = 1  # ModelLink's converter default, as its scripts use
    max_shard_bytes: int = 5 * 2**30
    add_qkv_bias: bool = False
    add_dense_bias: bool = False
    overwrite: bool = False
    lora_load: Optional[str] = None  # adapters to merge into a Megatron base
    lora_r: Optional[int] = None  # None: as the adapters were trained
    lora_alpha: Optional[int] = None
    lora_target_modules: Optional[List[str]] = None
    orm: bool = False  # a reward model: Megatron --stage rm <-> HF *ForSequenceClassification


Source = Union[HuggingFaceSource, MegatronSource]


def _check_divisible(source: Source, ffn: int, layout: ParallelLayout) -> None:
    attention, experts = source.shape.attention, source.shape.num_experts
    for what, value in (("attention heads", attention.heads), ("query groups", attention.groups),
                        ("ffn hidden size", ffn)):
        if value % layout.tp:
            raise ConversionError(f"--target-tensor-parallel-size {layout.tp} does not divide "
                                  f"the {value} {what}")
    if layout.ep > 1 and not experts:
        raise ConversionError("--target-expert-parallel-size > 1 needs an MoE model")
    if experts and experts % layout.ep:
        raise ConversionError(f"--target-expert-parallel-size {layout.ep} does not divide "
                              f"the {experts} experts")


def _check_family_flags(options: ConvertOptions) -> None:
    settings = get_family(options.family)
    if options.add_qkv_bias and not settings.qkv_bias:
        raise ConversionError(f"--add-qkv-bias: --model-type-hf {options.family} has no QKV bias")
    if options.add_dense_bias and not settings.dense_bias:
        raise ConversionError(f"--add-dense-bias: --model-type-hf {options.family} has no "
                              f"dense bias")


def _open_source(options: ConvertOptions) -> Source:
    dtype = DTYPES[options.params_dtype] if options.params_dtype else None
    if options.load_type == "hf":
        return HuggingFaceSource(options.load_dir, options.family, dtype, options.orm)
    if options.lora_load:
        source = LoraMergedSource(options.load_dir, options.lora_load, options.lora_r,
                                  options.lora_alpha, options.lora_target_modules)
    else:
        source = MegatronSource(options.load_dir)
    if getattr(source.args, "lora_target_modules", None):
        raise ConversionError(f"--load-dir {options.load_dir} holds LoRA adapters only: pass "
                              f"the base model as --load-dir and the adapters as --lora-load")
    check_megatron_source(options.load_dir, source.args, options.orm)
    return source


def _to_megatron(options: ConvertOptions, source: Source) -> None:
    if isinstance(source, HuggingFaceSource):
        layout = build_layout(source.shape.num_layers, options.tp, options.pp, options.ep,
                              options.layer_list, options.vpp_layers)
        _check_divisible(source, ffn_hidden_size(source.settings, source.config), layout)
        padded = padded_vocab(source.shape.vocab_size, layout.tp,
                              options.make_vocab_size_divisible_by)
        flags = model_flags(source.settings, source.config, layout, padded, source.dtype)
        args = args_from_hf(flags, layout, padded, source.config)
        if source.shape.reward:
            args.stage = "rm"  # trainer.py --stage rm loads its value head
        iteration = 0
    else:
        if options.params_dtype:
            raise ConversionError("--params-dtype is not supported for Megatron -> Megatron")
        layout = build_layout(source.shape.num_layers, options.tp, options.pp, options.ep,
                              options.layer_list, options.vpp_layers)
        _check_divisible(source, source.args.ffn_hidden_size, layout)
        old = source.args.padded_vocab_size
        padded = old if old % layout.tp == 0 else padded_vocab(
            source.shape.vocab_size, layout.tp, options.make_vocab_size_divisible_by)
        args = resharded_args(source.args, layout, padded)
        flags = None
        iteration = source.iteration
    with atomic_directory(options.save_dir) as tmp:
        write_megatron(source.read, source.shape, layout, args, tmp, iteration,
                       split_rules(args))
    if flags is not None:
        entry = "trainer.py --stage rm" if source.shape.reward else "pretrain_gpt.py"
        print(f"{entry} model flags for this checkpoint (load with --finetune):\n  "
              + " ".join(flags), flush=True)


def _to_huggingface(options: ConvertOptions, source: MegatronSource, out_dir: str,
                    template: Optional[str]) -> None:
    """`template`: the Hugging Face model folder given as --save-dir, if it is one."""
    shape, base = source.shape, getattr(source.args, "hf_config", None)
    if template is not None:
        base = folder_config(template, get_family(options.family))
        shape = replace(shape, vocab_size=vocab_for_folder(
            base, source.recorded_vocab_size(), source.args.padded_vocab_size, template))
    settings = variant_for_args(get_family(options.family), source.args, base)
    config = hf_config_from_args(settings, source.args, shape.vocab_size, base=base)
    if shape.reward:
        config = classifier_config(config, settings)
    dtype = DTYPES[options.params_dtype] if options.params_dtype else None
    copied: List[str] = []
    with atomic_directory(out_dir) as tmp:
        if template is not None:
            copied = copy_beside(template, tmp)
        mapping = get_model_family(options.family).mapping_for(settings)
        write_hf(source.read, shape, mapping, config, settings.config_class, tmp,
                 options.max_shard_bytes, dtype, options.tokenizer_model)
    if template is not None:
        print(f"wrote the Hugging Face model to {out_dir} (--save-dir is a model folder, left "
              f"unchanged; copied from it: {', '.join(copied) or 'nothing'})", flush=True)


def convert(options: ConvertOptions) -> None:
    """Every check on the input runs before the first byte is written."""
    if (options.load_type, options.save_type) == ("hf", "hf"):
        raise ConversionError("--load-model-type hf with --save-model-type hf: nothing to convert")
    inputs = {"--load-dir": options.load_dir, "--lora-load": options.lora_load,
              "--tokenizer-model": options.tokenizer_model}
    # ModelLink's usage: --save-dir is the original model folder, the output its mg2hg/.
    template = (options.save_dir if options.save_type == "hf" and is_hf_folder(options.save_dir)
                else None)
    out_dir = os.path.join(options.save_dir, MG2HG) if template else options.save_dir
    check_save_dir(out_dir, inputs, options.overwrite)
    _check_family_flags(options)
    if options.tokenizer_model:
        tokenizer_files(options.tokenizer_model)
    source = _open_source(options)
    if options.save_type == "mg":
        _to_megatron(options, source)
    else:
        _to_huggingface(options, source, out_dir, template)

"""Reward models across the converter (`--orm`, ModelLink's spelling): a Megatron checkpoint
trained with `--stage rm` <-> a Hugging Face `*ForSequenceClassification` with one label.

The value head is megatron-core's `output_layer.weight` slot holding a [1, hidden] weight,
replicated on every tensor-parallel rank (modellink/models/value_head.py), and Hugging Face's
`score.weight`. Which token is scored: ModelLink takes each sequence's last token as
preprocess_data.py wrote it (the template's end of turn, or the EOD with --append-eod);
transformers' sequence classifiers take the rightmost token that is not `pad_token_id`. The
two agree whenever `pad_token_id` is not that last token, so export writes a pad id that is
no end-of-sequence id: the source config's own, else the smallest id that is no EOS.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

import transformers

from modellink.checkpoint.errors import ConversionError
from modellink.models.families import FamilySettings
from modellink.models.value_head import is_reward_model

_CAUSAL = "ForCausalLM"
_CLASSIFIER = "ForSequenceClassification"


def classifier_architecture(settings: FamilySettings) -> str:
    """The family's transformers sequence classifier, where transformers has one."""
    name = settings.architecture.replace(_CAUSAL, _CLASSIFIER)
    if settings.config_class is None or name == settings.architecture or \
            not hasattr(transformers, name):
        raise ConversionError(f"--orm: --model-type-hf {settings.name} has no transformers "
                              f"sequence classifier ({settings.architecture} has no "
                              f"{_CLASSIFIER} counterpart) to hold a reward model")
    return name


def check_megatron_source(root: str, args: argparse.Namespace, orm: bool) -> None:
    """`--orm` must say what the Megatron checkpoint holds: the head it carries differs."""
    if is_reward_model(args) and not orm:
        raise ConversionError(f"--load-dir {root} is a reward model (trained with --stage rm): "
                              f"add --orm to convert its value head")
    if orm and not is_reward_model(args):
        raise ConversionError(f"--orm: --load-dir {root} is a language model, not a reward "
                              f"model (trained with --stage rm)")


def check_hf_config(directory: str, config: Dict[str, Any], orm: bool) -> None:
    """A sequence classifier converts with --orm (one label), a causal LM without it."""
    classifier = any(a.endswith(_CLASSIFIER) for a in config.get("architectures") or [])
    if classifier and not orm:
        raise ConversionError(f"--load-dir {directory} holds a sequence classifier "
                              f"({config['architectures'][0]}): add --orm to import it as a "
                              f"reward model")
    if not orm:
        return
    if not classifier:
        raise ConversionError(f"--orm: --load-dir {directory}/config.json architectures "
                              f"{config.get('architectures')} is no {_CLASSIFIER}")
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if labels != 1:
        raise ConversionError(f"--orm: --load-dir {directory} classifies into {labels} labels; "
                              f"a reward model has one score (num_labels 1)")


def _end_ids(config: Dict[str, Any]) -> List[int]:
    eos = config.get("eos_token_id")
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _pad_id(config: Dict[str, Any]) -> int:
    ends = _end_ids(config)
    pad: Optional[int] = config.get("pad_token_id")
    if pad is not None and pad not in ends:
        return pad
    return next(i for i in range(len(ends) + 1) if i not in ends)


def classifier_config(config: Dict[str, Any], settings: FamilySettings) -> Dict[str, Any]:
    """The causal LM's config.json as a one-score sequence classifier's."""
    out = dict(config, architectures=[classifier_architecture(settings)],
               pad_token_id=_pad_id(config))
    out.pop("num_labels", None)
    if len(out.get("id2label") or {}) != 1:  # keep a classifier's own label name
        out.update(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return out

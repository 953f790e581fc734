"""Instruction rows -> the micro-batch the train loop feeds GPTModel (the keys GPTDataset
batches carry: tokens, labels, loss_mask, position_ids, attention_mask).

As ModelLink, a row of n tokens gives n - 1 positions: tokens are input_ids[:-1], targets
labels[1:]. The loss counts a position only when its target is a response token (labels hold
IGNORE_INDEX on prompt tokens and padding) of the same sample. The preprocessor's
attention_mask row holds segment ids (1, 2, ... per packed sample, 0 on padding), so a sample
starts wherever the id changes: position ids restart there, and when a micro-batch holds a row
with two samples or more, the attention mask (True = masked, megatron-core's convention) keeps
every query within its own sample. Padding is its own segment, so no query is left with nothing
to attend to (a fully masked softmax row would be NaN).

With --tokenizer-padding-side left, as ModelLink's collator (the tokenizer's padding side), the
padding goes before the sample: the mask then keeps every real query off it and positions start
at 0 on the first real token, so the model sees each sample exactly as right-padded.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy
import torch

from modellink.data.handlers import IGNORE_INDEX

# --variable-seq-lengths rounds lengths up to a multiple of this: every new shape costs a kernel
# compile on NPU (and a new CUDA graph), so a handful of lengths beats one per sample count.
LENGTH_MULTIPLE = 8


def length_multiple(tensor_parallel: int, sequence_parallel: bool,
                    multiple: int = LENGTH_MULTIPLE, context_parallel: int = 1) -> int:
    """`multiple` is --pad-to-multiple-of; context parallelism cuts the sequence into 2 x CP
    chunks and sequence parallelism splits each rank's share across tensor-parallel ranks, so
    the length must divide among them too."""
    shards = 2 * context_parallel if context_parallel > 1 else 1
    return math.lcm(multiple, shards * (tensor_parallel if sequence_parallel else 1))


def _positions(segments: numpy.ndarray) -> numpy.ndarray:
    """0, 1, 2, ... restarting wherever the segment id changes (a row of [b, s] at once)."""
    index = numpy.broadcast_to(numpy.arange(segments.shape[1]), segments.shape)
    starts = numpy.ones(segments.shape, dtype=bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - numpy.maximum.accumulate(numpy.where(starts, index, 0), axis=1)


def segment_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """[b, 1, s, s] bool, True where query i may not attend key j (j > i or another sample)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return ~(same & causal).unsqueeze(1)


class InstructionCollator:
    """DataLoader collate_fn: pads every row to --seq-length, or with `variable` to the
    micro-batch's longest row rounded up to `multiple` (never beyond --seq-length); rows longer
    than --seq-length + 1 tokens are truncated, as ModelLink does. `left` pads before the
    sample (--tokenizer-padding-side left)."""

    def __init__(self, seq_length: int, variable: bool, multiple: int,
                 eod_mask_id: Optional[int] = None, left: bool = False) -> None:
        self.seq_length = seq_length
        self.variable = variable
        self.multiple = multiple
        self.eod_mask_id = eod_mask_id  # --eod-mask-loss: no loss on predicting the EOD token
        self.left = left

    def _length(self, longest: int) -> int:
        if not self.variable:
            return self.seq_length
        return min(-(-longest // self.multiple) * self.multiple, self.seq_length)

    def __call__(self, samples: Sequence[Dict[str, numpy.ndarray]]) -> Dict[str, torch.Tensor]:
        counts = [min(len(s["input_ids"]) - 1, self.seq_length) for s in samples]
        length = self._length(max(counts))
        # Padding token 0: it sits after every real token, so causal attention never lets a
        # real position see it, and its loss is masked.
        tokens = numpy.zeros((len(samples), length), dtype=numpy.int64)
        targets = numpy.zeros_like(tokens)
        segments = numpy.zeros_like(tokens)
        loss_mask = numpy.zeros((len(samples), length), dtype=numpy.float32)
        for row, (sample, n) in enumerate(zip(samples, counts)):
            ids, labels, segs = sample["input_ids"], sample["labels"], sample["attention_mask"]
            place = slice(length - n, length) if self.left else slice(0, n)
            tokens[row, place] = ids[:n]
            segments[row, place] = segs[:n]
            label = labels[1:n + 1]
            keep = (label != IGNORE_INDEX) & (segs[:n] == segs[1:n + 1]) & (segs[:n] != 0)
            if self.eod_mask_id is not None:
                keep &= label != self.eod_mask_id
            targets[row, place] = numpy.where(keep, label, 0)
            loss_mask[row, place] = keep
        batch = {
            "tokens": torch.from_numpy(tokens),
            "labels": torch.from_numpy(targets),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.from_numpy(_positions(segments)),
        }
        packed = any(len(numpy.unique(row[row != 0])) > 1 for row in segments)
        # Causal attention keeps trailing padding out by itself, not leading padding.
        if packed or (self.left and (segments[:, 0] == 0).any()):
            batch["attention_mask"] = segment_attention_mask(torch.from_numpy(segments))
        return batch


def _pad_batch(batch: Dict[str, torch.Tensor], length: int) -> Dict[str, torch.Tensor]:
    extra = length - batch["tokens"].shape[1]
    if extra == 0:
        return batch
    padded = {key: torch.nn.functional.pad(value, (0, extra))
              for key, value in batch.items() if key != "attention_mask"}
    if "attention_mask" in batch:
        old = batch["attention_mask"]
        mask = torch.ones(old.shape[0], 1, length, length, dtype=torch.bool)
        mask[..., :-extra, :-extra] = old
        # The new padding attends causally among itself (never an empty softmax row).
        mask[..., -extra:, -extra:] = ~torch.ones(extra, extra, dtype=torch.bool).tril()
        padded["attention_mask"] = mask
    return padded


def pad_step_to_common_length(iterators: Sequence[Iterator], num_microbatches: int
                              ) -> Tuple[List[Iterator], int]:
    """With pipeline parallelism megatron-core's schedule sends activations of one shape per
    step, so every micro-batch of the step is padded to the step's longest. Each iterator (one
    per virtual pipeline chunk) serves the same batches; returns new iterators and the length."""
    steps = [[next(iterator) for _ in range(num_microbatches)] for iterator in iterators]
    length = max(batch["tokens"].shape[1] for step in steps for batch in step)
    return [iter([_pad_batch(b, length) for b in step]) for step in steps], length

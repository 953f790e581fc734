"""DPO's forward step (Megatron-LM's `forward_step_func`) and loss function.

A micro-batch of b pairs is 2b rows (chosen, then rejected). The policy and the frozen
reference each run them, and their outputs travel together, concatenated along the batch
dimension: under pipeline parallelism every stage receives [s, 4b, h] (policy half, reference
half), runs each half through its own model, and sends both on, so the last stage holds all
four log-probabilities a pair's loss needs. GPTModel given labels returns each position's
-log p(label) from megatron-core's vocab-parallel cross entropy, which is exact under tensor
parallelism; a sequence's log-probability is the sum over its loss-mask positions.
"""
from __future__ import annotations

import argparse
from functools import partial
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from megatron.core.utils import get_attr_wrapped_model

from modellink.training.posttrain.dpo_loss import PairLogps, dpo_losses
from modellink.training.posttrain.reference import Reference
from modellink.training.posttrain.report import pair_loss_report

# Rows through the model per pair: chosen and rejected, for the policy and the reference.
ROWS_PER_PAIR = 4


class DPOForwardStep:
    def __init__(self, args: argparse.Namespace, model: List[torch.nn.Module],
                 reference: Reference) -> None:
        self.args = args
        self.reference = reference
        self.index = {id(chunk): i for i, chunk in enumerate(model)}

    def __call__(self, data_iterator: Iterator, model_chunk: torch.nn.Module
                 ) -> Tuple[torch.Tensor, Callable]:
        batch = {key: value.cuda(non_blocking=True) for key, value in next(data_iterator).items()}
        inputs = (batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
        # The GPTModel inside DDP and Float16Module (which forwards set_input_tensor too).
        policy_gpt = get_attr_wrapped_model(model_chunk, "pre_process", return_model_obj=True)
        ref_chunk = self.reference.chunk(self.index[id(model_chunk)], model_chunk)
        ref_gpt = get_attr_wrapped_model(ref_chunk, "pre_process", return_model_obj=True)
        received = None
        if not policy_gpt.pre_process:
            # What the schedule handed this stage (TransformerBlock keeps it as input_tensor):
            # the previous stage's policy and reference activations, split here.
            received = policy_gpt.decoder.input_tensor.chunk(2, dim=1)
            policy_gpt.set_input_tensor(received[0])
        output = model_chunk(*inputs, labels=batch["labels"])
        with torch.no_grad(), self.reference.context(model_chunk):
            if received is not None:
                ref_gpt.set_input_tensor(received[1].detach())
            ref_output = ref_chunk(*inputs, labels=batch["labels"])
        # Last stage: per-token losses [2b, s] each; other stages: activations [s, 2b, h].
        both = torch.cat([output, ref_output], dim=0 if policy_gpt.post_process else 1)
        return both, partial(self.loss_func, batch["loss_mask"])

    def loss_func(self, loss_mask: torch.Tensor, output: torch.Tensor
                  ) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, torch.Tensor]]:
        """Sum of the micro-batch's pair losses and its pair count (the schedule averages);
        the report holds (sum, count) of each logged metric, reduced over data parallel."""
        rows = loss_mask.shape[0]
        pairs = rows // 2
        mask = loss_mask.float()
        sequence = -(output.float() * torch.cat([mask, mask])).sum(dim=-1)  # log-probs [4b]
        tokens = mask.sum(dim=-1)
        logps = PairLogps(sequence[:pairs], sequence[pairs:rows], sequence[rows:rows + pairs],
                          sequence[rows + pairs:], tokens[:pairs], tokens[pairs:])
        result = dpo_losses(logps, self.args.dpo_beta, self.args.dpo_loss_type,
                            self.args.dpo_label_smoothing, self.args.pref_ftx)
        return pair_loss_report(
            result.losses.sum(), result.chosen_rewards, result.rejected_rewards,
            self.args.check_for_nan_in_loss_and_grad,
            **{"logps/chosen": logps.chosen.detach().sum(),
               "logps/rejected": logps.rejected.detach().sum()})


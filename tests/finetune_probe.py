"""Model-level fine-tuning checks that need megatron-core's parallel state (run under torchrun
with one rank): `finetune_probe.py OUT ARGS...` builds the model from ARGS and writes to OUT

* packed: the largest logit difference between two samples run packed in one row (through
  InstructionCollator's attention mask and position ids) and each run alone; unmasked: the
  same for the second sample without the mask (showing the check can fail);
* loss / hand_loss: the train loop's loss_func on a packed batch, and the same loss computed by
  hand from the logits over the response tokens only;
* left_gap: the loss difference between a micro-batch of two samples padded on the right and
  the same padded on the left (--tokenizer-padding-side left);

for RoPE and for learned absolute position embeddings (which read the restarted position ids).
"""
import json
import sys

import numpy
import torch

IGNORE = -100
# Two samples: (prompt tokens, response tokens).
SAMPLE_A = ([11, 12, 13, 14, 15], [21, 22, 23])
SAMPLE_B = ([31, 32, 33], [41, 42, 43, 44])
POSITION_EMBEDDINGS = ("rope", "learned_absolute")


def row(*samples):
    ids, labels, segments = [], [], []
    for segment, (prompt, response) in enumerate(samples, start=1):
        ids += prompt + response
        labels += [IGNORE] * len(prompt) + response
        segments += [segment] * (len(prompt) + len(response))
    pad = 3
    return {"input_ids": numpy.array(ids + [0] * pad),
            "labels": numpy.array(labels + [IGNORE] * pad),
            "attention_mask": numpy.array(segments + [0] * pad)}


def main(out: str, argv) -> None:
    from modellink.arguments import parse_args
    from modellink.training.initialize import initialize, shutdown

    backend = initialize(parse_args(argv))
    try:
        results = {kind: _check(parse_args(argv + ["--position-embedding-type", kind]),
                                backend.device) for kind in POSITION_EMBEDDINGS}
        with open(out, "w") as handle:
            json.dump(results, handle)
    finally:
        shutdown()


def _check(args, device: str) -> dict:
    from modellink.models.gpt import build_model_chunks, transformer_config_from_args
    from modellink.models.init import init_layout_independent
    from modellink.training.data.instruction_batch import InstructionCollator
    from modellink.training.loop import loss_func

    args.device, args.padded_vocab_size = device, 128
    config = transformer_config_from_args(args, device)
    (model,) = build_model_chunks(args, config)
    init_layout_independent([model], config, args.seed)
    model.eval()
    collate = InstructionCollator(args.seq_length, variable=True, multiple=1)

    def logits(batch):
        with torch.no_grad():
            out = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))
        return out.transpose(0, 1) if out.shape[0] != batch["tokens"].shape[0] else out

    packed = collate([row(SAMPLE_A, SAMPLE_B)])
    assert "attention_mask" in packed
    both = logits(packed)[0]
    len_a = sum(map(len, SAMPLE_A))
    alone_a = logits(collate([row(SAMPLE_A)]))[0][:len_a]
    alone_b = logits(collate([row(SAMPLE_B)]))[0][:sum(map(len, SAMPLE_B))]
    packed_gap = max((both[:len_a] - alone_a).abs().max().item(),
                     (both[len_a:len_a + len(alone_b)] - alone_b).abs().max().item())

    losses = model(packed["tokens"], packed["position_ids"], packed["attention_mask"],
                   labels=packed["labels"])
    loss_sum, tokens, _ = loss_func(packed["loss_mask"], losses)
    log_probs = torch.log_softmax(both.float(), dim=-1)
    responses = []  # (position, next-token target) for every response token
    start = 0
    for prompt, response in (SAMPLE_A, SAMPLE_B):
        first = start + len(prompt) - 1  # predicts the first response token
        responses += [(first + i, t) for i, t in enumerate(response)]
        start += len(prompt) + len(response)
    hand = -sum(log_probs[p, t] for p, t in responses) / len(responses)
    pair = [row(SAMPLE_A), row(SAMPLE_B)]
    sides = [InstructionCollator(args.seq_length, variable=True, multiple=1, left=left)(pair)
             for left in (False, True)]
    assert not torch.equal(sides[0]["tokens"], sides[1]["tokens"])
    side_losses = []
    for batch in sides:
        out = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"),
                    labels=batch["labels"])
        side_sum, side_tokens, _ = loss_func(batch["loss_mask"], out)
        side_losses.append((side_sum / side_tokens).item())
    unmasked = dict(packed, attention_mask=None)
    unmasked_gap = (logits(unmasked)[0][len_a:len_a + len(alone_b)] - alone_b).abs().max()
    return {"packed": packed_gap, "unmasked": unmasked_gap.item(),
            "loss": (loss_sum / tokens).item(), "tokens": int(tokens),
            "hand_loss": hand.item(), "hand_tokens": len(responses),
            "left_gap": abs(side_losses[0] - side_losses[1]), "right_loss": side_losses[0]}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

"""ModelLink's flags that this project does not run as ModelLink does: the ones not supported
yet, and the ones accepted from users' scripts that change nothing here.

A ModelLink user's script must never die on a bare "unrecognized arguments" nor have a flag
swallowed in silence: a flag of ModelLink's parser or example scripts that is not supported
yet is registered on the parser and fails with what ModelLink uses it for; a flag that is
accepted but has no effect here is named in the start-up log. `UNSUPPORTED` is the one list
of the former; docs/modellink_flags.md is checked against it (tests/test_modellink_flags.py).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Sequence, Tuple

from modellink.argument_errors import ArgumentError

# flag -> what ModelLink uses it for (the error message says it; the docs table repeats it).
UNSUPPORTED: Dict[str, str] = {
    # parallelism and memory
    "--reuse-fp32-param": "frees the fp32 master-weight copies of the distributed optimizer",
    "--swap-attention": "swaps attention activations to host memory",
    "--swap-modules": "which modules --swap-attention swaps",
    "--enable-recompute-layers-per-pp-rank": "counts --recompute-num-layers per pipeline rank, "
                                             "not per virtual stage",
    "--recompute-activation-function-num-layers": "layers whose MLP activation is recomputed",
    "--output-layer-slice-num": "splits the output-layer matmul into slices to save memory",
    # model shape
    "--skip-bias-add": "adds linear biases inside the layer instead of fusing them later",
    "--use-partial-rope": "ChatGLM's half-width RoPE (older spelling of --use-glm-rope)",
    "--input-layernorm-in-fp32": "computes the input layer norm in fp32",
    "--no-post-layer-norm": "drops the final layer norm",
    "--embedding-multiplier-scale": "multiplies the word embeddings by a constant (Grok)",
    "--output-multiplier-scale": "multiplies the output logits by a constant (Grok)",
    "--input-jitter": "multiplicative noise on the MoE router input",
    "--square-alibi-mask": "square (not causal-only) ALiBi bias matrix",
    "--fill-neg-inf": "fills the masked ALiBi positions with -inf",
    "--spec": "builds layers from a named module's layer spec",
    "--no-create-attention-mask-in-dataloader": "leaves the attention mask out of the data "
                                                "loader",
    # Megatron-LM training flags ModelLink inherits
    # mixture of experts
    "--expert-interval": "MoE layer in every N-th layer",
    "--moe-train-capacity-factor": "expert capacity of the legacy SwitchMLP MoE layer, not built "
                                   "here (its ModelLink mcore MoE ignores it); it keeps first "
                                   "choices before second ones and at least 4 tokens, and "
                                   "renormalises after drops, unlike megatron-core's layer, "
                                   "whose capacity --moe-expert-capacity-factor sets",
    "--noisy-gate-policy": "noise in the MoE gate (Jitter or RSample)",
    "--enable-token-rearrange-opt": "faster token permutation in the MoE layer",
    "--shared-expert-gate-output-dimension": "output width of the shared-expert gate",
    # preference training
    "--dpo-ftx": "declared beside --pref-ftx with the same help, but its DPO trainer never "
                 "reads it: only --pref-ftx weights the supervised loss, there and here",
}


class _NotSupportedYet(argparse.Action):
    """Fails as soon as argparse meets the flag, before any other check or any work."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str = "") -> None:
        raise ArgumentError(unsupported_message(self.option_strings[0]))


def unsupported_message(flag: str) -> str:
    return f"{flag} (ModelLink: {UNSUPPORTED[flag]}) is not supported yet"


def add_unsupported_flags(parser: argparse.ArgumentParser) -> None:
    """Register every flag of `UNSUPPORTED` the parser does not define itself. One that it
    does define was implemented meanwhile; tests/test_modellink_flags.py then asks for its
    row to move from UNSUPPORTED to the docs' working rows."""
    g = parser.add_argument_group("ModelLink flags not supported yet (each is an error)")
    for flag in UNSUPPORTED:
        if flag not in parser._option_string_actions:
            # Any number of values: the error names the flag, never the value after it.
            g.add_argument(flag, nargs="*", action=_NotSupportedYet, help=argparse.SUPPRESS)


# Flags accepted so users' scripts run unchanged although they change nothing here:
# (flag, whether the parsed arguments show it was given, why it changes nothing).
_NO_EFFECT: Tuple[Tuple[str, Callable[[argparse.Namespace], bool], str], ...] = (
    ("--use-mcore-models", lambda a: a.use_mcore_models,
     "megatron-core's GPTModel is the only model here"),
    ("--no-masked-softmax-fusion", lambda a: not a.masked_softmax_fusion,
     "megatron-core's fused masked softmax is never used here"),
    ("--no-rope-fusion", lambda a: not a.apply_rope_fusion,
     "Transformer Engine's fused RoPE is never used here"),
    ("--moe-permutation-async-comm", lambda a: a.moe_permutation_async_comm,
     "it reorders the MoE dispatchers' communication on NPUs (MindSpeed) and changes no "
     "result; the dispatchers here run megatron-core's order"),
    ("--local-rank", lambda a: a.local_rank is not None,
     "the device comes from the LOCAL_RANK variable the launcher sets"),
)


def no_effect_notes(args: argparse.Namespace) -> List[str]:
    """One start-up log line per given flag that is accepted but changes nothing here."""
    return [f"{flag} has no effect: {why}" for flag, given, why in _NO_EFFECT if given(args)]


def device_notes(args: argparse.Namespace) -> List[str]:
    """Flags that change nothing on the device the run resolved to (known after start-up)."""
    if not args.gradient_accumulation_fusion and args.device != "cpu":
        return ["--no-gradient-accumulation-fusion has no effect: on GPUs and NPUs the weight "
                "gradients are never fused here (that needs apex)"]
    return []


def no_effect_flags() -> Sequence[str]:
    return [flag for flag, _, _ in _NO_EFFECT]

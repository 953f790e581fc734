"""Architecture flags beyond Llama's (ModelLink's names): what Gemma, Gemma 2, Bloom and MiniCPM
need, and Megatron-LM's residual-stream options (built in modellink/models/residual.py).
Added to the training parser by modellink.arguments and checked against the rest of the
command line; each changes the model built in modellink/models (see the help texts)."""
from __future__ import annotations

import argparse

from modellink.argument_errors import require

# Feature flags as args attributes: the on/off ones, and those that take a value (None: off).
SWITCHES = ("geglu", "gelu_tanh", "openai_gelu", "add_rmsnorm_offset", "input_embeds_norm",
            "embed_layernorm", "post_norm", "apply_residual_connection_post_layernorm")
VALUED = ("attn_logit_softcapping", "output_logit_softcapping", "query_pre_attn_scalar",
          "interleave_sliding_window", "scale_emb", "dim_model_base", "scale_depth")


def add_model_feature_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model features (ModelLink)")
    g.add_argument("--geglu", action="store_true", help="gated MLP with a GELU gate")
    g.add_argument("--gelu-tanh", action="store_true",
                   help="gated MLP with a tanh-approximated GELU gate (Gemma)")
    g.add_argument("--openai-gelu", action="store_true",
                   help="tanh-approximated GELU in the ungated MLP (Bloom)")
    g.add_argument("--add-rmsnorm-offset", action="store_true",
                   help="RMSNorm scales by 1 + weight, the weight stored centred on 0 (Gemma)")
    g.add_argument("--input-embeds-norm", action="store_true",
                   help="multiply the word embeddings by sqrt(--hidden-size) (Gemma)")
    g.add_argument("--embed-layernorm", action="store_true",
                   help="normalise the word embeddings with a --normalization norm (Bloom)")
    g.add_argument("--post-norm", action="store_true",
                   help="normalise the attention and MLP outputs too, before each residual add "
                        "(Gemma 2's sandwich norms)")
    g.add_argument("--apply-residual-connection-post-layernorm", action="store_true",
                   help="each sub-block adds its output to its layer norm's output, not to the "
                        "norm's input (Megatron-LM's GPT)")
    g.add_argument("--fp32-residual-connection", action="store_true",
                   help="keep the residual stream in fp32 under --fp16/--bf16; the norms "
                        "return the params dtype")
    g.add_argument("--attn-logit-softcapping", type=float, default=None,
                   help="attention scores s become c * tanh(s / c) (Gemma 2)")
    g.add_argument("--output-logit-softcapping", type=float, default=None,
                   help="output logits z become c * tanh(z / c) (Gemma 2)")
    g.add_argument("--query-pre-attn-scalar", type=int, default=None,
                   help="scale attention scores by 1/sqrt(this) instead of 1/sqrt(kv channels)")
    g.add_argument("--interleave-sliding-window", type=int, default=None,
                   help="layers 1, 3, 5, ... attend only the W most recent keys, the query's own "
                        "included (Gemma 2's sliding_window)")
    g.add_argument("--scale-emb", type=float, default=None,
                   help="multiply the word embeddings by this (MiniCPM's scale_emb)")
    g.add_argument("--dim-model-base", type=float, default=None,
                   help="divide the final hidden states by --hidden-size / this before the "
                        "output layer (MiniCPM's muP width scaling)")
    g.add_argument("--scale-depth", type=float, default=None,
                   help="scale each attention and MLP output by this / sqrt(--num-layers) "
                        "before its residual add (MiniCPM)")


def validate_model_features(args: argparse.Namespace) -> None:
    """Runs before the fused-operator checks, which then see the window it sets."""
    require(not (args.swiglu and (args.geglu or args.gelu_tanh or args.openai_gelu)),
            "--swiglu cannot be combined with --geglu, --gelu-tanh or --openai-gelu")
    require(not (args.openai_gelu and (args.geglu or args.gelu_tanh)),
            "--openai-gelu is the ungated GELU; for a gated tanh GELU use --gelu-tanh alone")
    require(not args.fp32_residual_connection or args.fp16 or args.bf16,
            "--fp32-residual-connection needs --fp16 or --bf16 (as in Megatron-LM: without "
            "them the residual stream is fp32 already)")
    require(not (args.apply_residual_connection_post_layernorm and args.post_norm),
            "--apply-residual-connection-post-layernorm cannot be combined with --post-norm")
    require(not args.add_rmsnorm_offset or args.normalization == "RMSNorm",
            "--add-rmsnorm-offset needs --normalization RMSNorm")
    require(not (args.embed_layernorm and args.position_embedding_type == "learned_absolute"),
            "--embed-layernorm normalises the word embeddings alone; it cannot be combined "
            "with --position-embedding-type learned_absolute")
    for flag, value in (("--attn-logit-softcapping", args.attn_logit_softcapping),
                        ("--output-logit-softcapping", args.output_logit_softcapping),
                        ("--query-pre-attn-scalar", args.query_pre_attn_scalar),
                        ("--scale-emb", args.scale_emb),
                        ("--dim-model-base", args.dim_model_base),
                        ("--scale-depth", args.scale_depth)):
        require(value is None or value > 0, f"{flag} must be > 0, got {value}")
    require(args.scale_emb is None or not args.input_embeds_norm,
            "--scale-emb and --input-embeds-norm both scale the word embeddings; use one")
    require(args.scale_depth is None or not args.post_norm,
            "--scale-depth cannot be combined with --post-norm, whose norms would undo it")
    require(args.attn_logit_softcapping is None or not args.use_flash_attn,
            "--attn-logit-softcapping runs on the reference attention path only; drop "
            "--use-flash-attn (the fused kernels here cannot soft-cap)")
    args.window_attn_skip_freq = None
    window = args.interleave_sliding_window
    if window is not None:
        require(args.sliding_window is None,
                "--interleave-sliding-window and --sliding-window are mutually exclusive")
        require(window >= 2, f"--interleave-sliding-window must be >= 2, got {window}")
        # Our window counts the keys before the query; megatron-core's skip frequency 2 leaves
        # every second layer (2, 4, ...) with full attention.
        args.sliding_window = window - 1
        args.window_attn_skip_freq = 2

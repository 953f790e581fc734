"""Megatron-LM's residual-stream flags and ModelLink's device-limited MoE routing:
--apply-residual-connection-post-layernorm computes the post-norm-residual layer written out
by hand and trains alike under TP=2; --fp32-residual-connection keeps the stream between
layers in fp32 under --bf16 (the norms hand the params dtype on) and changes the loss;
group_limited_greedy (--topk-group, --routed-scaling-factor) picks experts only from the
best groups and a tiny MoE trains with it under expert parallelism."""
import json
import math

import pytest
import torch
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection
from megatron.core.transformer.spec_utils import build_module

from conftest import TINY_LLAMA, run_in_one_job
from modellink.arguments import ArgumentError, parse_args
from modellink.models.gpt import build_model_chunks, transformer_config_from_args
from modellink.models.init import init_layout_independent
from modellink.models.layer_spec import decoder_layer_spec
from modellink.models.moe import router_spec
from modellink.models.residual import PostLayerNormResidualLayer

POST_LN = ["--apply-residual-connection-post-layernorm"]
FP32_RESIDUAL = ["--bf16", "--fp32-residual-connection"]
MOE = ["--num-experts", "4", "--moe-aux-loss-coeff", "0.01"]
GROUPED = ["--moe-router-load-balancing-type", "group_limited_greedy", "--topk-group", "1",
           "--routed-scaling-factor", "2.0"]


# Bloom-like: LayerNorm, biased linears and an ungated GELU MLP.
TINY_LAYERNORM = [f for f in TINY_LLAMA if f not in ("--swiglu", "--disable-bias-linear")] + [
    "--normalization", "LayerNorm", "--openai-gelu"]


def _args(flags, world_size=1):
    args = parse_args(flags + ["--train-iters", "1"], world_size=world_size)
    args.device = "cpu"
    return args


def _layer(flags):
    args = _args(flags)
    layer = build_module(decoder_layer_spec(args), config=transformer_config_from_args(args, "cpu"),
                         layer_number=1)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(1.0 if param.dim() == 1 else 0.0, 0.2)
    return layer.eval()


@pytest.mark.parametrize("base", [TINY_LLAMA, TINY_LAYERNORM], ids=["rmsnorm", "layernorm"])
def test_post_layernorm_residual_equals_the_layer_written_out(one_rank, base):
    layer = _layer(base + POST_LN)
    assert isinstance(layer, PostLayerNormResidualLayer)
    x = torch.randn(8, 2, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, _ = layer(x, attention_mask=None)
        # Megatron-LM: residual = layernorm_output when the flag is on, in both sub-blocks.
        normed = layer.input_layernorm(x)
        attention, bias = layer.self_attention(normed, attention_mask=None)
        hidden = normed + (attention if bias is None else attention + bias)
        normed = layer.pre_mlp_layernorm(hidden)
        mlp, bias = layer.mlp(normed)
        expected = normed + (mlp if bias is None else mlp + bias)
        plain = _layer(base)
        plain.load_state_dict(layer.state_dict())  # the same parameter names
        pre_norm, _ = plain(x, attention_mask=None)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, pre_norm, atol=1e-2)


def _bf16_model(flags):
    args = _args(TINY_LLAMA + ["--bf16"] + flags)
    config = transformer_config_from_args(args, "cpu")
    (model,) = build_model_chunks(args, config)
    init_layout_independent([model], config, args.seed)
    return model


def _loss_and_dtypes(model):
    """The loss of a fixed batch and the dtypes leaving the embedding, each layer and norm."""
    dtypes = {}

    def record(name):
        def hook(module, inputs, output):
            dtypes[name] = (output[0] if isinstance(output, tuple) else output).dtype
        return hook

    model.embedding.register_forward_hook(record("embedding"))
    for index, layer in enumerate(model.decoder.layers):
        layer.register_forward_hook(record(f"layer {index}"))
        layer.input_layernorm.register_forward_hook(record(f"norm {index}"))
    model.decoder.final_layernorm.register_forward_hook(record("final norm"))
    tokens = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(32).expand_as(tokens)
    with torch.no_grad():
        loss = model(tokens, positions, None, labels=tokens).float().mean().item()
    return loss, dtypes


def test_fp32_residual_keeps_the_stream_between_layers_in_fp32(one_rank):
    loss, dtypes = _loss_and_dtypes(_bf16_model(["--fp32-residual-connection"]))
    stream = [name for name in dtypes if name.startswith(("embedding", "layer"))]
    assert {dtypes[name] for name in stream} == {torch.float32} and len(stream) == 5
    assert {dtypes[name] for name in dtypes if "norm" in name} == {torch.bfloat16}
    bf16_loss, bf16_dtypes = _loss_and_dtypes(_bf16_model([]))
    assert set(bf16_dtypes.values()) == {torch.bfloat16}
    assert loss != bf16_loss and loss == pytest.approx(bf16_loss, rel=0.05)


@pytest.mark.parametrize("flags,needle", [
    (["--fp32-residual-connection"], "needs --fp16 or --bf16"),
    (POST_LN + ["--post-norm"], "cannot be combined with --post-norm"),
    (MOE + GROUPED[:2], "needs --topk-group"),
    (MOE + GROUPED[:4], "needs --routed-scaling-factor"),
    (MOE + ["--topk-group", "1"], "need --moe-router-load-balancing-type group_limited_greedy"),
    (MOE + GROUPED + ["--n-group", "4", "--moe-router-topk", "3"], "exceeds the 1 experts"),
    (MOE + GROUPED + ["--topk-group", "2"], "must be between 1 and --n-group 1"),
    (MOE + GROUPED + ["--n-group", "3"], "--n-group 3 does not divide --num-experts 4"),
    (MOE + ["--n-group", "2"], "need --moe-router-load-balancing-type group_limited_greedy"),
])
def test_bad_residual_and_routing_flags_give_one_line_error(flags, needle):
    with pytest.raises(ArgumentError, match=needle) as err:
        parse_args(TINY_LLAMA + flags, world_size=1)
    assert "\n" not in str(err.value)


def _modellink_group_limited(logits, groups, topk_group, topk, scale):
    """ModelLink's group_limited_greedy, written out: softmax over all experts, groups ranked
    by their best expert, the top-k experts of the chosen groups, weights x scale."""
    scores = torch.softmax(logits, dim=-1)
    best = scores.view(len(scores), groups, -1).max(dim=-1).values
    chosen = torch.zeros_like(best).scatter(1, best.topk(topk_group, dim=-1).indices, 1)
    allowed = chosen.repeat_interleave(scores.shape[1] // groups, dim=1).bool()
    weights, experts = scores.masked_fill(~allowed, 0).topk(topk, dim=-1)
    routing = torch.zeros_like(scores).scatter(1, experts, weights * scale)
    return routing, routing > 0


@pytest.mark.parametrize("topk", [3, 4])
def test_group_limited_greedy_picks_experts_only_from_the_best_groups(one_rank, topk):
    # 8 experts in 4 groups of 2 (--expert-model-parallel-size 4), 2 groups, 3 or 4 experts
    # (with 4, megatron-core's own ranking would sum each group's best two).
    args = _args(TINY_LLAMA + ["--num-experts", "8", "--expert-model-parallel-size", "4",
                               "--moe-router-topk", str(topk)] + GROUPED[:2]
                 + ["--topk-group", "2", "--routed-scaling-factor", "2.5"], world_size=4)
    router = router_spec(args)(config=transformer_config_from_args(args, "cpu"),
                               pg_collection=get_default_pg_collection()).eval()
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    # Token 0's three best experts lie in three groups (0, 1, 2); only groups 0 and 1 may serve.
    logits[0] = torch.tensor([4.0, 1.0, 3.0, -1.0, 2.0, -1.0, -1.0, -1.0])
    # Eager: megatron-core compiles a step of routing, and torch.compile recurses forever over
    # the device check's redirections in a process that did not start through initialize().
    with torch.no_grad(), torch._dynamo.config.patch(disable=True):
        probs, routing_map = router.routing(logits.view(64, 1, 8))
    expected_probs, expected_map = _modellink_group_limited(logits, 4, 2, topk, 2.5)
    assert torch.equal(routing_map, expected_map)
    assert torch.allclose(probs, expected_probs, rtol=1e-6, atol=0)
    assert routing_map[0].nonzero().flatten().tolist() == [0, 1, 2, 3][:topk]
    assert (routing_map.view(64, 4, 2).any(dim=-1).sum(dim=-1) <= 2).all()
    ungrouped = torch.softmax(logits, dim=-1).topk(topk, dim=-1).indices
    assert not torch.equal(routing_map, torch.zeros_like(routing_map).scatter(1, ungrouped, True))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny runs on two CPU ranks in one job: post-norm residual at TP=1 and TP=2 + SP, fp32
    residual under bf16 across two pipeline stages, and group_limited_greedy with EP=2."""
    out = tmp_path_factory.mktemp("residual")
    runs = {
        "post_ln": TINY_LLAMA + POST_LN,
        "post_ln_tp2": TINY_LLAMA + POST_LN + ["--tensor-model-parallel-size", "2",
                                               "--sequence-parallel"],
        "fp32_residual_pp2": TINY_LLAMA + FP32_RESIDUAL + ["--pipeline-model-parallel-size", "2"],
        "group_limited_ep2": TINY_LLAMA + MOE + GROUPED + [
            "--moe-router-topk", "1", "--expert-model-parallel-size", "2"],
    }
    result = run_in_one_job([{"args": args + ["--train-iters", "3"],
                              "history": str(out / f"{name}.json")}
                             for name, args in runs.items()], nproc=2)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return {name: json.loads((out / f"{name}.json").read_text()) for name in runs}


def test_post_layernorm_residual_trains_alike_under_tensor_parallelism(trained):
    reference, run = trained["post_ln"], trained["post_ln_tp2"]
    assert run["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert reference["loss"][-1] < reference["loss"][0]


def test_fp32_residual_trains_across_pipeline_stages(trained):
    # The stages pass the fp32 stream: a bf16 receive buffer would not match what is sent.
    loss = trained["fp32_residual_pp2"]["loss"]
    assert all(math.isfinite(value) for value in loss) and loss[-1] < loss[0]


def test_group_limited_greedy_moe_trains_with_expert_parallelism(trained):
    loss = trained["group_limited_ep2"]["loss"]
    assert all(math.isfinite(value) for value in loss) and loss[-1] < loss[0]

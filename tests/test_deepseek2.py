"""DeepSeek-V2-Lite and DeepSeek-V2: multi-head latent attention with YaRN RoPE, shared experts
and a dense first layer; V2's low-rank queries and group-limited routing (groups ranked by their
best expert). HF -> Megatron at TP=2, PP=2, EP=2 gives transformers' logits; the way back is
bit-identical; the model trains with expert parallelism as it does without."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from megatron.core.transformer.moe.moe_utils import (
    get_default_pg_collection, get_moe_layer_wise_logging_tracker, group_limited_topk)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.transformer.transformer_config import TransformerConfig

from conftest import ROOT, TINY_LLAMA, _free_port
from logits_parity import assert_logits_close
from modellink.arguments import ArgumentError, parse_args
from modellink.checkpoint.cli import main as convert_main
from modellink.models.balance_losses import DeviceBalancedRouter
from modellink.models.gpt import transformer_config_from_args
from modellink.models.group_routing import best_expert_group_topk
from modellink.models.mla import LatentAttentionKernel
from modellink.models.moe import moe_config_kwargs, router_spec
from modellink.ops.attention import AttentionSettings
from test_convert_families import RUN_FLAGS, TOKENS, convert, dump_logits

# V2-Lite's shape in miniature: queries projected directly, a 16-channel key/value latent,
# 8 RoPE + 16 plain query/key channels, 12-channel values, YaRN over a 16-token original
# context (factor 4, so positions beyond it are interpolated), layer 0 dense, 4 routed experts
# (top 2, weights x 2.5, unnormalised) and 2 shared ones. The mscales differ so that both the
# cos/sin factor and the softmax scale YaRN derives from them are exercised.
LITE = dict(vocab_size=250, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=64, q_lora_rank=None,
            kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12,
            n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            n_shared_experts=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
            n_group=1, topk_group=1, topk_method="greedy", norm_topk_prob=False,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 16, "beta_fast": 32.0,
                             "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8})
# V2's shape in miniature: queries through a 16-channel latent, and 8 routed experts in 4 groups
# of 2, of which each token takes the top 4 among the 2 groups whose best expert scores highest.
# megatron-core would rank groups by the sum of their best 4 / 2 experts (both of a group here);
# a test checks that this picks other experts on the test's tokens, so the parity can fail.
V2 = dict(LITE, q_lora_rank=16, n_routed_experts=8, num_experts_per_tok=4, n_group=4,
          topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=16.0)
LAYOUT = ["--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size", "2",
          "--target-expert-parallel-size", "2"]


def _save_hf(directory: Path, config: dict = LITE, **overrides) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.DeepseekV2Config(**{**config, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # random norm weights, so a swapped one shows in the logits
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """V2-Lite and V2 converted, their logits from one torchrun launch."""
    root = tmp_path_factory.mktemp("deepseek2")
    out, jobs = {}, []
    for name, config in (("lite", LITE), ("v2", V2)):
        model = _save_hf(root / name / "hf", config)
        with torch.no_grad():
            reference = model(torch.tensor(TOKENS)).logits
        flags = convert("--load-model-type", "hf", "--save-model-type", "mg",
                        "--model-type-hf", "deepseek2", "--load-dir", str(root / name / "hf"),
                        "--save-dir", str(root / name / "mg"), *LAYOUT)
        jobs.append({"argv": flags + ["--load", str(root / name / "mg")] + RUN_FLAGS
                     + ["--global-batch-size", "4"], "tokens": TOKENS,
                     "out": str(root / name / "logits.pt")})
        out[name] = (root / name, reference, flags, model)
    dump_logits(jobs, 8, root)
    return out


@pytest.mark.parametrize("name,config", [("lite", LITE), ("v2", V2)])
def test_converted_model_gives_transformers_logits_at_tp2_pp2_ep2(converted, name, config):
    root, reference, flags, _ = converted[name]
    assert "--multi-head-latent-attention" in flags and "--first-k-dense-replace" in flags
    assert ("--q-lora-rank" in flags) == ("--n-group" in flags) == (name == "v2")
    ours = torch.load(root / "logits.pt")
    assert_logits_close(ours[..., :config["vocab_size"]], reference)


def _chosen(topk, scores: torch.Tensor) -> torch.Tensor:
    """Each token's chosen experts as a [tokens, experts] mask."""
    indices = topk(scores, V2["num_experts_per_tok"], V2["n_group"], V2["topk_group"])[1]
    return torch.zeros_like(scores, dtype=torch.bool).scatter(1, indices, True)


def _megatron_core_ranking(scores, topk, groups, group_topk):
    return group_limited_topk(scores, topk, scores.shape[0], scores.shape[1], groups, group_topk)


def test_v2_routing_differs_from_megatron_cores_group_ranking_on_these_tokens(converted):
    model = converted["v2"][3]
    gates = [layer.mlp.gate for layer in model.model.layers[V2["first_k_dense_replace"]:]]
    inputs = []
    hooks = [gate.register_forward_hook(lambda _, args, __: inputs.append(args[0]))
             for gate in gates]
    with torch.no_grad():
        model(torch.tensor(TOKENS))
    for hook in hooks:
        hook.remove()
    scores = torch.cat([torch.softmax(hidden.reshape(-1, V2["hidden_size"]) @ gate.weight.T,
                                      dim=-1) for hidden, gate in zip(inputs, gates)])
    v2 = _chosen(best_expert_group_topk, scores)
    assert (v2.view(len(scores), 4, 2).any(dim=-1).sum(dim=-1) == 2).all()
    assert not torch.equal(v2, _chosen(_megatron_core_ranking, scores))


@pytest.mark.parametrize("name,config", [("lite", LITE), ("v2", V2)])
def test_megatron_to_hf_is_bit_identical(converted, tmp_path, name, config):
    root = converted[name][0]
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--model-type-hf", "deepseek2",
            "--load-dir", str(root / "mg"), "--save-dir", str(tmp_path))
    original = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").state_dict()
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert torch.equal(back[key], tensor), key
    written = json.loads((tmp_path / "config.json").read_text())
    source = json.loads((root / "hf" / "config.json").read_text())
    assert written["rope_parameters"] == source["rope_parameters"]
    assert {k: written[k] for k in config if k != "rope_parameters"} == \
        {k: source[k] for k in config if k != "rope_parameters"}


@pytest.mark.parametrize("overrides,needle", [
    # Low-rank queries with greedy routing, and group-limited routing with direct queries: no
    # published model has either; each is refused naming the value it cannot take.
    ({"q_lora_rank": 8}, "topk_method='greedy'"),
    ({"topk_method": "group_limited_greedy", "n_group": 2, "topk_group": 1},
     "topk_method='group_limited_greedy'"),
    ({"norm_topk_prob": True}, "norm_topk_prob=True"),
])
def test_deepseek_v2_layouts_not_converted_are_refused(tmp_path, overrides, needle, capsys):
    _save_hf(tmp_path / "hf", **overrides)
    capsys.readouterr()  # transformers' progress bar
    assert convert_main(["--load-model-type", "hf", "--save-model-type", "mg",
                         "--model-type-hf", "deepseek2", "--load-dir", str(tmp_path / "hf"),
                         "--save-dir", str(tmp_path / "mg")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "mg").exists()


MLA = ["--multi-head-latent-attention", "--qk-layernorm", "--kv-lora-rank", "16",
       "--qk-rope-head-dim", "8", "--qk-nope-head-dim", "16", "--v-head-dim", "12"]
MOE = ["--num-experts", "4", "--moe-router-topk", "2", "--moe-intermediate-size", "32"]
# TINY_LLAMA without its GQA, which does not apply to MLA.
_GQA = TINY_LLAMA.index("--group-query-attention")
DENSE = TINY_LLAMA[:_GQA] + TINY_LLAMA[_GQA + 3:] + ["--train-iters", "2"]


@pytest.mark.parametrize("flags,needle", [
    (MLA[:1], "--multi-head-latent-attention needs --kv-lora-rank"),
    (["--kv-lora-rank", "16"], "need --multi-head-latent-attention"),
    (MLA + ["--group-query-attention", "--num-query-groups", "2"],
     "cannot be combined with --group-query-attention"),
    (MLA + ["--rope-scaling-type", "llama3"], "supports --rope-scaling-type yarn only"),
    (["--first-k-dense-replace", "1"], "--first-k-dense-replace needs --num-experts"),
    (MOE + ["--n-shared-experts", "2", "--moe-shared-expert-intermediate-size", "48"],
     "disagrees with --moe-shared-expert-intermediate-size 48"),
    (MOE + ["--first-k-dense-replace", "4"], "leaves no MoE layer"),
    (MOE + ["--norm-topk-prob", "--moe-router-pre-softmax"], "give one of them"),
    (MOE + ["--seq-aux", "--moe-router-load-balancing-type", "sinkhorn"],
     "--seq-aux needs the aux_loss balancing"),
])
def test_bad_deepseek_flags_give_one_line_error(flags, needle):
    with pytest.raises(ArgumentError, match=needle) as err:
        parse_args(DENSE + flags, world_size=1)
    assert "\n" not in str(err.value)


def test_deepseek_flags_reach_the_moe_configuration():
    args = parse_args(DENSE + MOE + ["--n-shared-experts", "2", "--first-k-dense-replace", "1",
                                     "--moe-layer-freq", "2", "--norm-topk-prob", "--seq-aux"],
                      world_size=1)
    config = moe_config_kwargs(args)
    assert config["moe_ffn_hidden_size"] == 32  # --moe-intermediate-size is its spelling
    assert config["moe_shared_expert_intermediate_size"] == 64
    assert config["moe_layer_freq"] == [0, 0, 1, 0]  # layer 0 dense, then every second MoE
    assert config["moe_router_load_balancing_type"] == "seq_aux_loss"
    assert config["moe_router_pre_softmax"] is False


def _train(tmp_path: Path, runs: list) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               MODELLINK_TEST_RUNS=json.dumps(runs))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
           f"--master-port={_free_port()}", str(ROOT / "tests" / "launch_pretrain_runs.py")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return [json.loads(Path(run["history"]).read_text()) for run in runs]


def test_expert_parallel_training_matches_data_parallel_and_balances_devices(tmp_path):
    # Low-rank queries too (V2's --q-lora-rank), the yarn RoPE, DeepSeek's routing and losses.
    model = (DENSE + MLA + MOE + [
        "--q-lora-rank", "16", "--n-shared-experts", "2", "--first-k-dense-replace", "1",
        "--moe-router-pre-softmax", "--routed-scaling-factor", "2.5", "--seq-aux",
        "--moe-aux-loss-coeff", "0.01", "--rope-scaling-type", "yarn",
        "--rope-scaling-factor", "4", "--original-max-position-embeddings", "16"])
    ep2 = ["--expert-model-parallel-size", "2"]
    # Weights far above DeepSeek's (0.05, 0.02) so that their gradients stand out.
    balanced = ep2 + ["--moe-device-level-aux-loss-coeff", "1.0",
                      "--moe-comm-aux-loss-coeff", "1.0"]
    runs = [{"args": model + extra, "history": str(tmp_path / f"{name}.json")}
            for name, extra in (("dp", []), ("ep", ep2), ("balanced", balanced))]
    dp, ep, device_balanced = _train(tmp_path, runs)
    assert len(dp["loss"]) == 2 and all(math.isfinite(loss) for loss in dp["loss"])
    assert dp["loss"][1] != dp["loss"][0]  # the first step changed the weights
    assert ep["loss"] == pytest.approx(dp["loss"], rel=1e-5)
    assert ep["grad_norm"] == pytest.approx(dp["grad_norm"], rel=1e-4)
    # The device balance losses leave the language-model loss alone and add gradients.
    assert device_balanced["loss"][0] == pytest.approx(ep["loss"][0], rel=1e-6)
    assert device_balanced["grad_norm"][0] != pytest.approx(ep["grad_norm"][0], rel=1e-3)


def _device_losses_written_out(logits, routing_map, devices, devices_per_token, topk):
    """DeepSeek-V2's formulas: f_j = E/(K T) x routes to j, P_j = mean score of j."""
    tokens, experts = routing_map.shape
    scores = torch.softmax(logits, dim=-1)
    f = routing_map.sum(dim=0).float() * experts / (topk * tokens)
    p = scores.mean(dim=0).view(devices, -1).sum(dim=-1)
    device = (f.view(devices, -1).mean(dim=-1) * p).sum()
    sent = routing_map.view(tokens, devices, -1).any(dim=-1).sum(dim=0).float()
    comm = (sent * devices / (devices_per_token * tokens) * p).sum()
    return device.item(), comm.item()


def test_device_and_communication_balance_losses_follow_deepseek_v2(one_rank):
    args = parse_args(DENSE + MOE + ["--moe-device-level-aux-loss-coeff", "0.05",
                                     "--moe-comm-aux-loss-coeff", "0.02"], world_size=1)
    args.device = "cpu"
    spec = router_spec(args)
    assert (spec.keywords["device_coeff"], spec.keywords["comm_coeff"]) == (0.05, 0.02)
    # 4 experts on 2 devices (as --expert-model-parallel-size 2 groups them), top-2 routing.
    router = DeviceBalancedRouter(
        config=transformer_config_from_args(args, "cpu"),
        pg_collection=get_default_pg_collection(), devices=2, devices_per_token=2,
        device_coeff=0.05, comm_coeff=0.02).train()
    router.set_layer_number(1)
    def logits_leaf():
        # Made first, then marked: the CPU backend's device redirection of a factory call
        # would otherwise hand back a non-leaf copy.
        return torch.randn(32, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()

    logits = logits_leaf()
    with torch._dynamo.config.patch(disable=True):  # as in test_residual_and_routing_flags
        probs, routing_map = router.routing(logits.view(32, 1, 4))
    tracker = get_moe_layer_wise_logging_tracker()
    device, comm = _device_losses_written_out(logits.detach(), routing_map, 2, 2, 2)
    assert tracker["device_level_balance_loss"]["values"][0].item() == pytest.approx(device)
    assert tracker["communication_balance_loss"]["values"][0].item() == pytest.approx(comm)
    probs.sum().backward()  # the losses reach the router's gradients
    plain = logits_leaf()
    probs, _ = TopKRouter.routing(router, plain.view(32, 1, 4))
    probs.sum().backward()
    assert not torch.allclose(logits.grad, plain.grad)


@pytest.mark.parametrize("path", ["flash-attn", "reference"])
def test_fused_kernel_paths_pad_values_to_the_key_width_and_cut_them_back(path):
    # On CPU in fp32 the flash-attn path runs SDPA on zero-padded values; the plain path's
    # math assumes equal key and value widths and is padded the same way.
    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4)
    q, k = (torch.randn(8, 2, 4, 24, generator=torch.Generator().manual_seed(s))
            for s in (1, 2))
    v = torch.randn(8, 2, 4, 12, generator=torch.Generator().manual_seed(3))

    def kernel(name):
        return LatentAttentionKernel(config, 1, AttnMaskType.causal, "self", softmax_scale=0.2,
                                     settings=AttentionSettings(path=name)).eval()

    expected = kernel("sdpa")(q, k, v, None)
    assert expected.shape == (8, 2, 4 * 12)
    assert torch.allclose(kernel(path)(q, k, v, None), expected, atol=1e-6, rtol=1e-5)


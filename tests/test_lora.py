"""LoRA: TP/SP and PP/DP layouts train the same adapters, only adapters train and are saved,
a run resumes from them exactly, convert_ckpt --lora-load merges them into a plain model that
transformers runs with the LoRA model's logits, and inference.py --lora-load generates as the
merged model does."""
import shutil

import pytest
import torch
import transformers

from conftest import train_history
from modellink.arguments import ArgumentError, parse_args
from modellink.errors import run_cli
from test_convert_families import TOKENS, convert, dump_logits, save_tiny_hf
from test_inference_generate import loaded, single_process_env

LORA = ["--lora-target-modules", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2",
        "--lora-r", "4", "--lora-alpha", "8"]
TRAIN = ["--seq-length", "32", "--mock-data", "--vocab-size", "250", "--micro-batch-size", "2",
         "--global-batch-size", "8", "--lr", "1e-2", "--lr-decay-style", "constant",
         "--clip-grad", "1.0", "--seed", "1234", "--device", "cpu", "--log-interval", "1",
         "--eval-iters", "0", "--train-iters", "4"]
TP2_SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
# World 4 = PP 2 x DP 2, with the example scripts' sharded optimizer and overlapped reduce.
PP2_DP2 = ["--pipeline-model-parallel-size", "2", "--use-distributed-optimizer",
           "--overlap-grad-reduce"]
# Per layer: qkv A 4x64 + B 128x4, proj 4x64 + 64x4, fc1 (SwiGLU) 4x64 + 256x4, fc2 4x128 + 64x4.
ADAPTER_PARAMS = 4 * (256 + 512 + 256 + 256 + 256 + 1024 + 512 + 256)


def _model_flags(printed):
    """The converter's printed pretrain_gpt.py flags without the layout ones."""
    return printed[:printed.index("--tensor-model-parallel-size")] + \
        printed[printed.index("--padded-vocab-size"):]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    hf = save_tiny_hf("llama2", root / "hf")
    model = []
    for tp in (1, 2):
        printed = convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir",
                          str(root / "hf"), "--save-dir", str(root / f"base{tp}"),
                          "--target-tensor-parallel-size", str(tp),
                          # Room for the mock tokenizer's end-of-document token past the 250.
                          "--make-vocab-size-divisible-by", "128")
        model = _model_flags(printed)
    reference = train_history(root, model + TRAIN + LORA + [
        "--load", str(root / "base1"), "--save", str(root / "adapters1"), "--save-interval", "4"],
        nproc=1, name="reference")
    lora_tp2 = model + TRAIN + LORA + TP2_SP + ["--load", str(root / "base2")]
    sp = train_history(root, lora_tp2 + ["--save", str(root / "adapters"), "--save-interval",
                                         "2"], nproc=2, name="tp2_sp")
    # Resume at iteration 2, as if the run had stopped there.
    shutil.copytree(root / "adapters", root / "at2")
    shutil.rmtree(root / "at2" / "iter_0000004")
    (root / "at2" / "latest_checkpointed_iteration.txt").write_text("2")
    resumed = train_history(root, lora_tp2 + ["--lora-load", str(root / "at2")], nproc=2,
                            name="resumed")
    inference = model + TP2_SP + ["--load", str(root / "base2"), "--finetune",
                                  "--micro-batch-size", "1", "--train-iters", "0", "--lr", "0",
                                  "--mock-data", "--device", "cpu", "--vocab-size", "250"]
    dump_logits([{"argv": inference + LORA + ["--lora-load", str(root / "adapters")],
                  "tokens": TOKENS, "out": str(root / "lora.pt")},
                 {"argv": inference, "tokens": TOKENS, "out": str(root / "base.pt")}], 2, root)
    return {"root": root, "hf": hf, "model": model, "reference": reference, "sp": sp,
            "resumed": resumed}


@pytest.fixture(scope="module")
def pipeline_data_parallel(runs):
    root = runs["root"]
    convert("--load-model-type", "hf", "--save-model-type", "mg", "--load-dir", str(root / "hf"),
            "--save-dir", str(root / "base_pp2"), "--target-pipeline-parallel-size", "2",
            "--make-vocab-size-divisible-by", "128")
    return train_history(root, runs["model"] + TRAIN + LORA + PP2_DP2 + [
        "--load", str(root / "base_pp2"), "--save", str(root / "adapters_pp2"),
        "--save-interval", "4"], nproc=4, name="pp2_dp2")


def test_tensor_and_sequence_parallel_match_single_process(runs):
    reference, sp = runs["reference"], runs["sp"]
    assert len(sp["loss"]) == 4
    assert sp["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert sp["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    assert reference["loss"][-1] < reference["loss"][0]


def test_checkpoint_holds_only_adapters_and_their_optimizer_state(runs):
    iteration = runs["root"] / "adapters" / "iter_0000004"
    assert sorted(p.name for p in iteration.iterdir()) == ["mp_rank_00", "mp_rank_01"]
    total = 0
    for rank_dir in iteration.iterdir():
        state = torch.load(rank_dir / "model_optim_rng.pt", weights_only=False)
        weights = state["model"]
        assert len(weights) == 4 * 4 * 2
        assert all(k.endswith(("lora_A.default.weight", "lora_B.default.weight"))
                   for k in weights)
        assert weights["decoder.layers.0.self_attention.linear_qkv.lora_B.default.weight"] \
            .shape == (64, 4)  # this rank's half of the 128 fused QKV rows
        assert weights["decoder.layers.0.mlp.linear_fc2.lora_A.default.weight"].shape == (4, 64)
        assert weights["decoder.layers.3.mlp.linear_fc1.lora_B.default.weight"].abs().max() > 0
        moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
        assert sum(m.numel() for m in moments) == sum(w.numel() for w in weights.values())
        total += sum(w.numel() for w in weights.values())
    replicated = 4 * (256 + 256 + 256 + 256)  # qkv A, proj B, fc1 A, fc2 B: on both ranks
    assert total == ADAPTER_PARAMS + replicated


def test_pipeline_and_data_parallel_match_single_process(runs, pipeline_data_parallel):
    reference, run = runs["reference"], pipeline_data_parallel
    assert run["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    assert run["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-5)
    single = torch.load(runs["root"] / "adapters1" / "iter_0000004" / "mp_rank_00" /
                        "model_optim_rng.pt", weights_only=False)["model"]
    iteration = runs["root"] / "adapters_pp2" / "iter_0000004"
    assert sorted(p.name for p in iteration.iterdir()) == ["mp_rank_00_000", "mp_rank_00_001"]
    for stage, rank_dir in enumerate(sorted(iteration.iterdir())):
        weights = torch.load(rank_dir / "model_optim_rng.pt", weights_only=False)["model"]
        assert len(weights) == 2 * 4 * 2  # this stage's 2 layers, numbered from 0 as Megatron's
        assert all(k.endswith(("lora_A.default.weight", "lora_B.default.weight"))
                   for k in weights)
        for name, weight in weights.items():
            parts = name.split(".")
            parts[2] = str(int(parts[2]) + 2 * stage)
            torch.testing.assert_close(weight, single[".".join(parts)], rtol=1e-4, atol=1e-5)
        # The sharded optimizer state, gathered over DP, covers this stage's adapters only.
        shards = torch.load(rank_dir / "distrib_optim.pt", weights_only=False)
        assert shards[0][(torch.float32, torch.float32)]["numel_unpadded"] == ADAPTER_PARAMS // 2


def test_resume_from_adapters_continues_identically(runs):
    """The resumed run reads the base weights from --load again, so matching losses also show
    that the first run never changed them."""
    assert runs["resumed"]["iteration"] == [3, 4]
    assert runs["resumed"]["loss"] == runs["sp"]["loss"][2:]
    assert runs["resumed"]["grad_norm"] == runs["sp"]["grad_norm"][2:]


def _hf_logits(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory)
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits


def test_merged_export_reproduces_lora_logits(runs, tmp_path):
    root = runs["root"]
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
            str(root / "base2"), "--lora-load", str(root / "adapters"), "--lora-r", "4",
            "--lora-alpha", "8", "--lora-target-modules", "linear_qkv", "linear_proj",
            "linear_fc1", "linear_fc2", "--save-dir", str(tmp_path / "merged"))
    merged = _hf_logits(tmp_path / "merged")
    lora = torch.load(root / "lora.pt")[..., :250]
    base = torch.load(root / "base.pt")[..., :250]
    assert (lora - merged).abs().max().item() < 1e-4
    assert (lora - base).abs().max().item() > 1e-2  # the adapters do change the model
    # Megatron -> Megatron (resharded to TP=1) merges the same weights.
    convert("--load-model-type", "mg", "--save-model-type", "mg", "--load-dir",
            str(root / "base2"), "--lora-load", str(root / "adapters"),
            "--save-dir", str(tmp_path / "merged_mg"))
    convert("--load-model-type", "mg", "--save-model-type", "hf", "--load-dir",
            str(tmp_path / "merged_mg"), "--save-dir", str(tmp_path / "merged_mg_hf"))
    assert (_hf_logits(tmp_path / "merged_mg_hf") - merged).abs().max().item() < 1e-5


def _generated(argv):
    """Logits of TOKENS and the greedy continuation of its first row, as inference.py loads."""
    from modellink.inference import generate
    with loaded(argv) as model:
        return model.logits(torch.tensor(TOKENS)), \
            generate(model, TOKENS[0], max_new_tokens=8)[0].token_ids


def test_inference_applies_adapters_as_the_merged_checkpoint(runs, tmp_path, capsys):
    from modellink.inference.tasks import run
    root = runs["root"]
    convert("--load-model-type", "mg", "--save-model-type", "mg", "--load-dir",
            str(root / "base1"), "--lora-load", str(root / "adapters1"),
            "--save-dir", str(tmp_path / "merged"))
    flags = runs["model"] + ["--device", "cpu", "--tokenizer-type", "NullTokenizer",
                             "--vocab-size", "250", "--max-length", "32"]
    lora = flags + LORA + ["--load", str(root / "base1"), "--lora-load", str(root / "adapters1")]
    logits, tokens = _generated(lora)
    merged_logits, merged_tokens = _generated(flags + ["--load", str(tmp_path / "merged")])
    base_logits, base_tokens = _generated(flags + ["--load", str(root / "base1")])
    assert (logits - merged_logits).abs().max().item() < 1e-4
    assert tokens == merged_tokens != base_tokens
    assert (logits - base_logits).abs().max().item() > 1e-2

    def cli(argv):
        with single_process_env():
            status = run_cli(lambda: run(argv + ["--task", "greedy", "--max-new-tokens", "8",
                                                 "--prompt", " ".join(map(str, TOKENS[0]))]))
        return status, capsys.readouterr()

    status, printed = cli(lora)
    assert status == 0, printed.err
    assert printed.out.strip().endswith(" ".join(map(str, tokens)))
    # Same shapes, so nothing else would notice that every adapter is scaled twice as much.
    status, printed = cli(lora + ["--lora-alpha", "16"])
    assert status == 2
    assert "--lora-alpha 16 does not match the adapters at" in printed.err
    assert "trained with --lora-alpha 8" in printed.err


@pytest.mark.parametrize("extra,message", [
    (["--lora-target-modules", "q_proj"], "--lora-target-modules: unknown module 'q_proj'"),
    (LORA + ["--lora-r", "0"], "--lora-r must be >= 1"),
    (LORA + ["--lora-load", "/nonexistent/adapters"], "--lora-load /nonexistent/adapters does "
                                                      "not exist"),
    (["--lora-load", "/tmp"], "--lora-load needs --lora-target-modules"),
    (["--lora-r", "8"], "--lora-r needs --lora-target-modules"),
    (LORA + ["--lora-modules-to-save", "lm_head"], "--lora-modules-to-save: unknown module"),
    (LORA + ["--num-experts", "4"], "LoRA on MoE expert layers"),
])
def test_bad_lora_flags_are_one_line_errors(tiny_llama, extra, message):
    with pytest.raises(ArgumentError, match=message) as failure:
        parse_args(tiny_llama + ["--train-iters", "1"] + extra, world_size=1)
    assert "\n" not in str(failure.value)


def test_linear_qkv_target_under_latent_attention_is_refused(tiny_llama):
    # The target would otherwise match no linear of the layer and adapt nothing.
    gqa = tiny_llama.index("--group-query-attention")
    mla = tiny_llama[:gqa] + tiny_llama[gqa + 3:] + [
        "--multi-head-latent-attention", "--kv-lora-rank", "16", "--qk-rope-head-dim", "8",
        "--qk-nope-head-dim", "8", "--v-head-dim", "8", "--train-iters", "1"]
    parse_args(mla + ["--lora-target-modules", "linear_proj"], world_size=1)
    with pytest.raises(ArgumentError, match="multi-head latent attention .* has no linear_qkv"):
        parse_args(mla + ["--lora-target-modules", "linear_qkv", "linear_proj"], world_size=1)


def test_legacy_target_names_and_tied_modules_to_save(tiny_llama):
    tied = [f for f in tiny_llama if f != "--untie-embeddings-and-output-weights"]
    args = parse_args(tied + ["--train-iters", "1", "--lora-target-modules", "query_key_value",
                              "dense", "linear_qkv", "--lora-modules-to-save", "word_embeddings"],
                      world_size=1)
    assert args.lora_target_modules == ["linear_qkv", "linear_proj"]
    assert args.lora_modules_to_save == ["word_embeddings", "output_layer"]


@pytest.mark.parametrize("extra,message", [
    (["--lora-alpha", "16"], "--lora-alpha 16 does not match the adapters, which were trained "
                             "with --lora-alpha 8"),
    (["--lora-target-modules", "linear_qkv"], "were trained on linear_qkv linear_proj"),
    (["--lora-load", "/nonexistent"], "--lora-load /nonexistent does not exist"),
])
def test_merge_refuses_flags_that_contradict_the_adapters(runs, tmp_path, capsys, extra,
                                                          message):
    from modellink.checkpoint.cli import main
    root = runs["root"]
    assert main(["--load-model-type", "mg", "--load-dir", str(root / "base2"), "--lora-load",
                 str(root / "adapters"), "--save-dir", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_adapters_alone_are_not_a_model(runs, tmp_path, capsys):
    from modellink.checkpoint.cli import main
    assert main(["--load-model-type", "mg", "--load-dir", str(runs["root"] / "adapters"),
                 "--save-dir", str(tmp_path / "out")]) == 2
    assert "holds LoRA adapters only" in capsys.readouterr().err

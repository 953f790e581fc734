"""inference.py: ModelLink's tasks print their generations, chat keeps (and clears) history in
the template's format, and bad input (missing or mismatched checkpoint, a prompt longer than
--max-length) ends in one `error:` line."""
import io

import pytest

from modellink.errors import run_cli
from test_inference_generate import (  # noqa: F401 (fixture)
    PROMPTS, as_text, hf_generate, loaded, single_process_env, tiny)


def _run(argv, capsys, stdin=""):
    from modellink.inference.tasks import run
    with single_process_env(), pytest.MonkeyPatch.context() as patch:
        patch.setattr("sys.stdin", io.StringIO(stdin))
        status = run_cli(lambda: run(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_tasks_print_generations(tiny, capsys):
    hf, argv, _ = tiny
    prompt = PROMPTS[0]
    status, out, err = _run(argv + ["--task", "greedy", "beam_search", "return_output_log_probs",
                                    "--prompt", as_text(prompt), "--max-new-tokens", "8",
                                    "--use-kv-cache", "--top-k", "5"], capsys)
    assert status == 0, err
    greedy = hf_generate(hf, prompt, max_new_tokens=8)
    beam = hf_generate(hf, prompt, max_new_tokens=8, num_beams=2)
    sections = out.split("=" * 16)
    assert as_text([t for t in greedy if t != 2]) in sections[2]
    assert as_text([t for t in beam if t != 2]) in sections[4]
    assert "log probs: [" in sections[6]


def test_chat_keeps_history_in_the_template_and_clears_it(tiny, capsys):
    _, argv, _ = tiny
    status, out, err = _run(argv + ["--task", "chat", "--prompt-type", "alpaca",
                                    "--max-new-tokens", "4", "--history-turns", "2"], capsys,
                            stdin="w5 w6\nw7\nclear\nw8\nexit\n")
    assert status == 0, err
    assert out.count("You >> ") == 5 and out.count("ModelLink >> ") == 3
    assert "(history cleared)" in out

    from modellink.data.templates import get_template
    from modellink.inference.chat import _history_prompt
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 3
    assert len(_history_prompt(history, "q", 2)) == 5 and _history_prompt(history, "q", 0) == \
        [{"role": "user", "content": "q"}]
    assert get_template("alpaca")  # the chat used this template's format


@pytest.mark.parametrize("change,message", [
    (lambda a, root: a[:a.index("--load")] + ["--load", str(root / "missing")],
     "no checkpoint at --load"),
    (lambda a, root: a + ["--ffn-hidden-size", "96"], "weights do not fit"),
    (lambda a, root: a + ["--tensor-model-parallel-size", "2"], "world size 1"),
    (lambda a, root: a + ["--prompt", " ".join(["w5"] * 70)],
     "leaves no room to generate within --max-length 64"),
    (lambda a, root: a + ["--top-p", "2"], "--top-p must be in [0, 1]"),
])
def test_bad_input_is_one_line(tiny, capsys, change, message):
    _, argv, root = tiny
    status, _, err = _run(change(list(argv), root) + ["--task", "greedy"], capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]


def test_fused_operators_keep_kv_cache_generation_exact(tiny):
    """--use-flash-attn (SDPA), fused RoPE / RMSNorm / SwiGLU on a one-token decode step.
    (Here, not beside the other generation tests: one loaded model per process at a time.)"""
    from modellink.inference import generate
    hf, argv, _ = tiny
    fused = ["--use-flash-attn", "--use-fused-rotary-pos-emb", "--use-fused-rmsnorm",
             "--use-fused-swiglu", "--use-kv-cache"]
    with loaded(argv + fused) as model:
        for prompt in PROMPTS[:2]:
            assert generate(model, prompt, max_new_tokens=12)[0].token_ids == \
                hf_generate(hf, prompt, max_new_tokens=12)


def test_decoding_fast_path_is_taken_and_matches_megatron_core_forward(tiny, monkeypatch):
    """The short layer/attention forwards of a KV-cache step run (megatron-core's are never
    entered) and give the logits megatron-core's own forwards give, bit for bit."""
    import torch
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.transformer_layer import TransformerLayer

    from modellink.models.decoding_layer import DecodingTransformerLayer
    from modellink.ops.rotary_attention import RotarySelfAttention
    _, argv, _ = tiny
    fused = ["--use-flash-attn", "--use-fused-rotary-pos-emb", "--use-fused-rmsnorm",
             "--use-fused-swiglu"]
    entered = []
    for cls, name in ((TransformerLayer, "_forward_attention"), (SelfAttention, "forward")):
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, *a, _o=original, _n=name, **k:
                            entered.append(_n) or _o(self, *a, **k))

    def steps(model):
        cache = model.new_cache(1, 16)
        logits = [model.logits(torch.tensor([PROMPTS[0]]), cache)]
        for token in (7, 9, 11):
            logits.append(model.logits(torch.tensor([[token]]), cache))
        return logits

    with loaded(argv + fused) as model:
        fast = steps(model)
        assert entered == []
        monkeypatch.setattr(DecodingTransformerLayer, "_decoding", lambda *a: False)
        monkeypatch.setattr(RotarySelfAttention, "_plain_decoding", lambda *a: False)
        reference = steps(model)
        assert "_forward_attention" in entered and "forward" in entered
    for ours, theirs in zip(fast, reference):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("family", ["gemma2", "bloom", "qwen25"])
def test_families_generate_what_transformers_does_on_the_decoding_fast_path(family, tmp_path):
    """The KV-cache fast path with the fused flags on the families furthest from Llama:
    sandwich norms, soft-capping and sliding windows (Gemma 2), ALiBi with biases and
    LayerNorm (Bloom), QKV biases with tied embeddings (Qwen2.5)."""
    import torch
    import transformers

    from modellink.inference import generate
    from remote_code_families import model_type_hf
    from test_convert_families import convert as convert_family
    from test_convert_families import save_tiny_hf
    from test_inference_generate import RUN_FLAGS, word_tokenizer
    hf = save_tiny_hf(family, tmp_path / "hf")
    flags = convert_family("--load-model-type", "hf", "--save-model-type", "mg",
                           "--model-type-hf", model_type_hf(family), "--load-dir",
                           str(tmp_path / "hf"), "--save-dir", str(tmp_path / "mg"))
    # Gemma 2's soft-capping runs on the reference attention path only.
    fused = (["--use-flash-attn"] if family != "gemma2" else []) + [
        "--use-fused-rotary-pos-emb", "--use-fused-rmsnorm", "--use-fused-swiglu"]
    argv = flags + RUN_FLAGS + fused + ["--load", str(tmp_path / "mg"),
                                        "--tokenizer-name-or-path",
                                        word_tokenizer(tmp_path / "tokenizer")]
    no_stop = transformers.GenerationConfig(max_new_tokens=12, do_sample=False,
                                            eos_token_id=None, pad_token_id=0)
    with loaded(argv) as model:
        for prompt in PROMPTS[:2]:
            expected = hf.generate(torch.tensor([prompt]), generation_config=no_stop)
            ours = generate(model, prompt, max_new_tokens=12, use_kv_cache=True,
                            stop_token_ids=(-1,))[0].token_ids
            assert ours == expected[0, len(prompt):].tolist()

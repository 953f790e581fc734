"""Generation of a converted tiny random Llama gives exactly transformers' tokens: greedy with
and without KV cache, beam search, batches of uneven prompts, streaming and seeded sampling.

The helpers here (tiny model, tokenizer, conversion, in-process loading) are shared by the
other test_inference_* files."""
import contextlib
import io
from pathlib import Path
from typing import Iterator, List

import pytest
import torch
import transformers

from conftest import _free_port
from modellink.checkpoint.cli import main as convert_main

VOCAB = 250
PROMPTS = [[5, 17, 33, 4, 99, 100, 7], [41, 9, 13], [8, 150, 3, 77, 200, 6, 12, 44, 90]]
RUN_FLAGS = ["--device", "cpu", "--tokenizer-type", "PretrainedFromHF", "--max-length", "64"]


def tiny_llama(directory: Path) -> transformers.PreTrainedModel:
    """A random 2-layer Llama whose output layer is scaled up so that the next token is
    clearly ahead of the others (near-ties would make any two float paths disagree)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    return model


def word_tokenizer(directory: Path) -> str:
    """Word-level tokenizer: "w7" is id 7; <s> (1) and </s> (2) as in the model's config."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                         bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return str(directory)


def convert(hf_dir: Path, out: Path, *layout: str) -> List[str]:
    """HF -> Megatron; returns the model flags the converter prints (without layout flags)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(io.StringIO()):
        assert convert_main(["--load-model-type", "hf", "--save-model-type", "mg",
                             "--load-dir", str(hf_dir), "--save-dir", str(out), *layout]) == 0
    flags = text.getvalue().strip().splitlines()[-1].split()
    cut = flags.index("--tensor-model-parallel-size")
    return flags[:cut] + flags[cut + 6:]


def as_text(ids: List[int]) -> str:
    return " ".join({1: "<s>", 2: "</s>"}.get(i, f"w{i}") for i in ids)


def hf_generate(model: transformers.PreTrainedModel, prompt: List[int], **kwargs) -> List[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, pad_token_id=0, **kwargs)
    return out[0, len(prompt):].tolist()


@contextlib.contextmanager
def single_process_env() -> Iterator[None]:
    """A world of one for in-process loading, on a port of its own, one CPU thread (tiny ops
    lose more to thread hand-offs than they gain; other test processes share the cores)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port())),
                           ("MODELLINK_CPU_THREADS", "1")):
            patch.setenv(key, value)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@contextlib.contextmanager
def loaded(argv: List[str]) -> Iterator[object]:
    from modellink.inference import load_model, parse_inference_args
    with single_process_env():
        model = load_model(parse_inference_args(argv))
        try:
            yield model
        finally:
            model.close()
            torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    hf = tiny_llama(root / "hf")
    tokenizer = word_tokenizer(root / "tokenizer")
    flags = convert(root / "hf", root / "mg")
    argv = flags + RUN_FLAGS + ["--tokenizer-name-or-path", tokenizer, "--load", str(root / "mg")]
    return hf, argv, root


@pytest.fixture(scope="module")
def model(tiny):
    with loaded(tiny[1]) as model:
        yield model


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_matches_transformers(tiny, model, use_kv_cache):
    from modellink.inference import generate
    hf = tiny[0]
    for prompt in PROMPTS[:2]:
        ours = generate(model, prompt, max_new_tokens=16, use_kv_cache=use_kv_cache)[0]
        assert ours.token_ids == hf_generate(hf, prompt, max_new_tokens=16)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_beam_search_matches_transformers(tiny, model, use_kv_cache):
    from modellink.inference import generate
    hf = tiny[0]
    for prompt, beams in zip(PROMPTS, (2, 3, 4)):
        ours = generate(model, prompt, max_new_tokens=12, num_beams=beams,
                        use_kv_cache=use_kv_cache)[0]
        assert ours.token_ids == hf_generate(hf, prompt, max_new_tokens=12, num_beams=beams)


def test_uneven_batch_equals_one_by_one(model):
    from modellink.inference import generate
    batch = generate(model, PROMPTS, max_new_tokens=12)
    for prompt, out in zip(PROMPTS, batch):
        assert out.token_ids == generate(model, prompt, max_new_tokens=12)[0].token_ids


def test_stream_text_and_log_probs(tiny, model):
    from modellink.inference import generate, stream_generate
    hf = tiny[0]
    prompt = PROMPTS[0]
    full = generate(model, as_text(prompt), max_new_tokens=10, return_log_probs=True)[0]
    assert list(stream_generate(model, prompt, max_new_tokens=10)) == full.token_ids
    assert full.text == as_text([t for t in full.token_ids if t != 2])
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + full.token_ids])).logits[0, len(prompt) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(full.token_ids)[:, None])
    assert torch.allclose(torch.tensor(full.log_probs), expected[:, 0], atol=1e-4)


def test_sampling_is_seeded_and_top_k_one_is_greedy(model):
    from modellink.inference import generate
    prompt = PROMPTS[1]
    sampled = [generate(model, prompt, max_new_tokens=12, do_sample=True, top_p=0.9,
                        temperature=1.5, seed=seed)[0].token_ids for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert generate(model, prompt, max_new_tokens=12, do_sample=True, top_k=1)[0].token_ids == \
        generate(model, prompt, max_new_tokens=12)[0].token_ids


def test_generation_stops_at_stop_token_and_max_length(model):
    from modellink.inference import generate
    prompt = PROMPTS[0]
    free = generate(model, prompt, max_new_tokens=12)[0].token_ids
    stop = free[3]
    stopped = generate(model, prompt, max_new_tokens=12, stop_token_ids=(stop,))[0]
    assert stopped.token_ids == free[:free.index(stop) + 1]
    capped = generate(model, prompt, max_new_tokens=12, max_length=len(prompt) + 5)[0]
    assert capped.token_ids == free[:5]


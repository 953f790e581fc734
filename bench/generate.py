"""Greedy decoding with KV cache: modellink.inference.generate against transformers' generate
on the same random Llama (fp32, same device and thread count, same prompt, same new-token
count; the CPU unless --device cuda), at batch 1 and batch 4 by default.

Converts a random Hugging Face Llama to a Megatron checkpoint (not timed), loads it in this
process, checks both produce the same tokens, then alternates timed runs of each and keeps
each side's best per phase (the machine may be shared). Prints tokens/s of both, where the
time goes (prefill, one decoding step, sampling and loop per token; each side's model forward
is timed from outside, so the split is the same for both) and the ratios (target: >= 1.0x).

    python bench/generate.py                         # ~60M parameters, batch 1 and 4
    python bench/generate.py --preset medium --batch 4 --new-tokens 64
    python bench/generate.py --device cuda --json OUT.json   # tests/gpu/run.sh reads OUT.json
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FUSED = ["--use-flash-attn", "--use-fused-rmsnorm", "--use-fused-swiglu",
         "--use-fused-rotary-pos-emb"]
PRESETS = {  # hidden, layers, ffn, heads, kv heads, vocab
    "tiny": (64, 4, 128, 4, 2, 1000),
    "small": (512, 8, 1408, 8, 4, 32000),
    "medium": (1024, 12, 2816, 16, 8, 32000),
}


def _hf_model(directory: str, preset: str):
    import torch
    import transformers

    hidden, layers, ffn, heads, kv, vocab = PRESETS[preset]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
        bos_token_id=1, eos_token_id=2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(directory)
    return model


def _tokenizer(directory: str, vocab: int) -> str:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"[UNK]": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    backend = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                         bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return directory


def _convert(hf_dir: str, mg_dir: str):
    from modellink.checkpoint.cli import main as convert_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert convert_main(["--load-model-type", "hf", "--save-model-type", "mg",
                             "--load-dir", hf_dir, "--save-dir", mg_dir]) == 0
    return out.getvalue().strip().splitlines()[-1].split()


class _Phases:
    """Times each model forward of a generate() call: the first is the prompt's (prefill), the
    others one decoding step each; the rest of the call is sampling and loop bookkeeping."""

    def __init__(self, owner: object, name: str, sync: Callable[[], None]) -> None:
        self.calls = []
        self._sync = sync
        forward = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = forward(*args, **kwargs)
            self._sync()
            self.calls.append(time.perf_counter() - start)
            return out

        setattr(owner, name, timed)

    def split(self, total: float, new_tokens: int) -> dict:
        """Seconds: prefill, one decoding step, and the rest of the call per new token."""
        return {"prefill": self.calls[0], "decode": sum(self.calls[1:]) / (len(self.calls) - 1),
                "sampling": (total - sum(self.calls)) / new_tokens}


def _run(generate_fn: Callable[[], object], phases: _Phases, sync: Callable[[], None],
         new_tokens: int) -> dict:
    """One timed generate() call: its total and its phases, in seconds."""
    phases.calls = []
    start = time.perf_counter()
    generate_fn()
    sync()
    total = time.perf_counter() - start
    return {"total": total, **phases.split(total, new_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--operators", nargs="*", default=FUSED,
                        help="modellink operator flags (default: the LLaMA-2 example's)")
    options = parser.parse_args()

    import torch
    import transformers

    from modellink.inference import generate, load_model, parse_inference_args

    work = tempfile.mkdtemp(prefix="bench_generate_")
    hf = _hf_model(os.path.join(work, "hf"), options.preset).to(options.device)
    flags = _convert(os.path.join(work, "hf"), os.path.join(work, "mg"))
    vocab = PRESETS[options.preset][-1]
    os.environ.setdefault("MODELLINK_CPU_THREADS", str(options.threads))
    model = load_model(parse_inference_args(flags + [
        "--device", options.device, "--tokenizer-type", "PretrainedFromHF", "--load",
        os.path.join(work, "mg"), "--tokenizer-name-or-path",
        _tokenizer(os.path.join(work, "tok"), vocab), "--max-length",
        str(options.prompt_tokens + options.new_tokens), *options.operators]))
    torch.set_num_threads(options.threads)
    sync = torch.cuda.synchronize if options.device == "cuda" else (lambda: None)
    sides = {"modellink": _Phases(model, "logits", sync),
             "transformers": _Phases(hf, "forward", sync)}
    # No stop token on either side, so both generate exactly new-tokens (for transformers this
    # is cheaper than min_new_tokens, whose logits processor runs every step).
    no_stop = transformers.GenerationConfig(max_new_tokens=options.new_tokens, do_sample=False,
                                            use_cache=True, eos_token_id=None, pad_token_id=0)
    hidden, layers = PRESETS[options.preset][:2]
    params = sum(p.numel() for p in hf.parameters()) / 1e6
    print(f"greedy decoding with KV cache, {options.preset} Llama ({params:.0f}M params, "
          f"hidden {hidden}, {layers} layers), prompt {options.prompt_tokens}, "
          f"{options.new_tokens} new tokens, {options.threads} threads, best of "
          f"{options.repeats} interleaved; modellink operators: "
          f"{' '.join(options.operators) or 'none'}")
    results = []
    for batch in options.batch:
        prompts = torch.randint(3, vocab, (batch, options.prompt_tokens),
                                generator=torch.Generator().manual_seed(1)).to(options.device)
        runs = {"modellink": lambda: generate(model, prompts.tolist(),  # noqa: E731
                                              max_new_tokens=options.new_tokens,
                                              use_kv_cache=True, stop_token_ids=(-1,)),
                "transformers": lambda: hf.generate(prompts, generation_config=no_stop)}
        same = ([o.token_ids for o in runs["modellink"]()]
                == runs["transformers"]()[:, options.prompt_tokens:].tolist())
        best = {name: {} for name in runs}
        for _ in range(options.repeats):
            for name, run in runs.items():
                with torch.inference_mode():
                    timing = _run(run, sides[name], sync, options.new_tokens)
                best[name] = {k: min(v, best[name].get(k, v)) for k, v in timing.items()}
        result = {"batch": batch, "same_tokens": same,
                  "ratio": best["transformers"]["total"] / best["modellink"]["total"]}
        print(f"batch {batch}{'':<8}tokens/s   prefill ms   decode ms/step   sampling ms/token")
        for name, t in best.items():
            result[f"{name}_tokens_per_s"] = batch * options.new_tokens / t["total"]
            result[f"{name}_phases_ms"] = {k: v * 1e3 for k, v in t.items() if k != "total"}
            print(f"  {name:<13}{result[f'{name}_tokens_per_s']:9.1f}   {t['prefill'] * 1e3:10.2f}"
                  f"   {t['decode'] * 1e3:14.3f}   {t['sampling'] * 1e3:17.3f}")
        ratios = {k: best["transformers"][k] / best["modellink"][k]
                  for k in ("prefill", "decode", "sampling")}
        print(f"  ratio modellink / transformers: {result['ratio']:.2f}x (prefill "
              f"{ratios['prefill']:.2f}x, decode {ratios['decode']:.2f}x, sampling "
              f"{ratios['sampling']:.2f}x; same tokens: {same})")
        results.append(result)
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"preset": options.preset, "batches": results}, handle)
    model.close()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

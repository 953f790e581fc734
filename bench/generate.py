"""Greedy decoding with KV cache: modellink.inference.generate against transformers' generate
on the same random Llama (fp32, same device and thread count, same prompt, same new-token
count; the CPU unless --device cuda).

Converts a random Hugging Face Llama to a Megatron checkpoint (not timed), loads it in this
process, checks both produce the same tokens, then alternates timed runs of each and keeps
each side's best (the machine may be shared). Prints tokens/s of both and the ratio
(target: >= 1.0x).

    python bench/generate.py                         # ~60M parameters, batch 1
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=1)
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
    total = options.prompt_tokens + options.new_tokens
    model = load_model(parse_inference_args(flags + [
        "--device", options.device, "--tokenizer-type", "PretrainedFromHF", "--load",
        os.path.join(work, "mg"), "--tokenizer-name-or-path",
        _tokenizer(os.path.join(work, "tok"), vocab), "--max-length", str(total),
        *options.operators]))
    torch.set_num_threads(options.threads)
    prompts = torch.randint(3, vocab, (options.batch, options.prompt_tokens),
                            generator=torch.Generator().manual_seed(1)).to(options.device)
    # No stop token on either side, so both generate exactly new-tokens (for transformers this
    # is cheaper than min_new_tokens, whose logits processor runs every step).
    ours = lambda: generate(model, prompts.tolist(), max_new_tokens=options.new_tokens,  # noqa
                            use_kv_cache=True, stop_token_ids=(-1,))
    no_stop = transformers.GenerationConfig(max_new_tokens=options.new_tokens, do_sample=False,
                                            use_cache=True, eos_token_id=None, pad_token_id=0)
    theirs = lambda: hf.generate(prompts, generation_config=no_stop)  # noqa
    same = [o.token_ids for o in ours()] == theirs()[:, options.prompt_tokens:].tolist()
    best = {"modellink": float("inf"), "transformers": float("inf")}
    for _ in range(options.repeats):
        for name, run in (("modellink", ours), ("transformers", theirs)):
            start = time.perf_counter()
            with torch.inference_mode():
                run()
            if options.device == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    tokens = options.batch * options.new_tokens
    hidden, layers = PRESETS[options.preset][:2]
    params = sum(p.numel() for p in hf.parameters()) / 1e6
    print(f"greedy decoding with KV cache, {options.preset} Llama ({params:.0f}M params, "
          f"hidden {hidden}, {layers} layers), batch {options.batch}, prompt "
          f"{options.prompt_tokens}, {options.new_tokens} new tokens, {options.threads} threads, "
          f"best of {options.repeats}; modellink operators: {' '.join(options.operators) or 'none'}")
    for name, seconds in best.items():
        print(f"  {name:<13} {tokens / seconds:9.1f} tokens/s")
    ratio = best["transformers"] / best["modellink"]
    print(f"  ratio modellink / transformers: {ratio:.2f}x (same tokens: {same})")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"preset": options.preset, "batch": options.batch, "same_tokens": same,
                       "ratio": ratio, **{f"{name}_tokens_per_s": tokens / seconds
                                          for name, seconds in best.items()}}, handle)
    model.close()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

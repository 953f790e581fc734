"""Checkpoint conversion against the I/O floor: HF -> Megatron (TP=2, PP=2) and back.

Builds a random Llama as safetensors shards (not timed), then runs, each in a fresh process:
  floor   HF -> MG : read every tensor from the safetensors and torch.save the same bytes
                     into TP x PP files, one file's worth held at a time
  convert HF -> MG : tools/checkpoint/convert_ckpt.py --target-tensor/pipeline-parallel-size
  floor   MG -> HF : torch.load each of those files and write the same bytes as safetensors
  convert MG -> HF : tools/checkpoint/convert_ckpt.py --save-model-type hf
and prints wall time, time / floor, peak RSS and peak RSS / model bytes. Targets: time at most
2x the floor, peak RSS at most 1.5x the model's bytes.

    python bench/convert.py                 # ~0.25B parameters fp32 (a couple of minutes)
    python bench/convert.py --preset 1b     # ~1B parameters
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {  # hidden, layers, ffn, heads, kv heads, vocab
    "small": (1024, 16, 2816, 16, 8, 32000),
    "1b": (2048, 16, 5632, 16, 16, 32000),
}
TP, PP = 2, 2


def _make_model(directory: str, preset: str, dtype: str) -> int:
    import torch
    import transformers
    from safetensors.torch import save_file

    hidden, layers, ffn, heads, kv, vocab = PRESETS[preset]
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                                      num_hidden_layers=layers, num_attention_heads=heads,
                                      num_key_value_heads=kv, max_position_embeddings=4096)
    config.save_pretrained(directory)
    torch_dtype = getattr(torch, dtype)
    d = hidden // heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,),
                       p + "self_attn.q_proj.weight": (heads * d, hidden),
                       p + "self_attn.k_proj.weight": (kv * d, hidden),
                       p + "self_attn.v_proj.weight": (kv * d, hidden),
                       p + "self_attn.o_proj.weight": (hidden, heads * d),
                       p + "mlp.gate_proj.weight": (ffn, hidden),
                       p + "mlp.up_proj.weight": (ffn, hidden),
                       p + "mlp.down_proj.weight": (hidden, ffn)})
    generator = torch.Generator().manual_seed(0)
    shard, shard_bytes, files, weight_map, total = {}, 0, [], {}, 0

    def flush():
        name = f"model-{len(files) + 1:05d}.safetensors"
        save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
        files.append(name)
        weight_map.update({k: name for k in shard})

    for name, shape in shapes.items():
        tensor = torch.empty(shape, dtype=torch.float32).normal_(0, 0.02, generator=generator)
        tensor = tensor.to(torch_dtype)
        size = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + size > 1 << 30:
            flush()
            shard, shard_bytes = {}, 0
        shard[name] = tensor
        shard_bytes += size
        total += size
    flush()
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle)
    return total


def _floor_to_megatron(hf_dir: str, out_dir: str) -> None:
    import torch
    from safetensors import safe_open

    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as handle:
        weight_map = json.load(handle)["weight_map"]
    names = list(weight_map)
    groups = [names[i::TP * PP] for i in range(TP * PP)]
    for index, group in enumerate(groups):
        tensors = {}
        for name in group:
            with safe_open(os.path.join(hf_dir, weight_map[name]), "pt") as handle:
                tensors[name] = handle.get_tensor(name)
        torch.save(tensors, os.path.join(out_dir, f"floor_{index}.pt"))
        del tensors


def _floor_to_hf(mg_dir: str, out_dir: str) -> None:
    import torch
    from safetensors.torch import save_file

    for index, name in enumerate(sorted(f for f in os.listdir(mg_dir) if f.endswith(".pt"))):
        tensors = torch.load(os.path.join(mg_dir, name))
        save_file(tensors, os.path.join(out_dir, f"floor_{index}.safetensors"))
        del tensors


def _child(task: str, src: str, dst: str) -> None:
    """Run one measured step in this (fresh) process and print its time and peak RSS."""
    sys.path.insert(0, ROOT)
    start = time.perf_counter()
    if task == "floor_to_mg":
        _floor_to_megatron(src, dst)
    elif task == "floor_to_hf":
        _floor_to_hf(src, dst)
    else:
        from modellink.checkpoint.cli import main
        common = ["--load-dir", src, "--save-dir", dst]
        argv = (["--load-model-type", "hf", "--save-model-type", "mg",
                 "--target-tensor-parallel-size", str(TP),
                 "--target-pipeline-parallel-size", str(PP)] if task == "convert_to_mg"
                else ["--load-model-type", "mg", "--save-model-type", "hf"])
        if main(argv + common) != 0:
            raise SystemExit(f"{task} failed")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_rss": peak}))


def _measure(task: str, src: str, dst: str) -> dict:
    if task.startswith("floor"):
        os.makedirs(dst, exist_ok=True)
    os.sync()  # earlier steps' dirty pages must not be written back during this one
    # Both sides get the allocator setting the converter's entry scripts use.
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="1")
    result = subprocess.run([sys.executable, __file__, "--child", task, src, dst],
                            capture_output=True, text=True, check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    work = tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir)
    try:
        hf = os.path.join(work, "hf")
        os.makedirs(hf)
        model_bytes = _make_model(hf, args.preset, args.dtype)
        print(f"model: Llama preset {args.preset}, {args.dtype}, "
              f"{model_bytes / 2**30:.2f} GiB; TP={TP} PP={PP}; {os.cpu_count()} cores")
        steps = [("floor_to_mg", hf, os.path.join(work, "floor_mg")),
                 ("convert_to_mg", hf, os.path.join(work, "mg")),
                 ("floor_to_hf", os.path.join(work, "floor_mg"), os.path.join(work, "floor_hf")),
                 ("convert_to_hf", os.path.join(work, "mg"), os.path.join(work, "hf_back"))]
        results = {task: _measure(task, src, dst) for task, src, dst in steps}
        for direction in ("mg", "hf"):
            floor, conv = results[f"floor_to_{direction}"], results[f"convert_to_{direction}"]
            label = "HF -> MG" if direction == "mg" else "MG -> HF"
            print(f"{label}: convert {conv['seconds']:.1f}s, floor {floor['seconds']:.1f}s, "
                  f"time ratio {conv['seconds'] / floor['seconds']:.2f}x (target <= 2); "
                  f"peak RSS {conv['peak_rss'] / 2**30:.2f} GiB = "
                  f"{conv['peak_rss'] / model_bytes:.2f}x model bytes (target <= 1.5; floor "
                  f"{floor['peak_rss'] / model_bytes:.2f}x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""TP=2 and PP=2 generation (two gloo ranks, one torchrun launch) gives the tokens of TP=1
and of transformers: greedy with and without KV cache, beam search, seeded sampling.

Run as a script under torchrun, this file is the launcher: it loads each job's checkpoint
and writes rank 0's generations to the job's output file."""
import json
import os
import subprocess
import sys

from conftest import ROOT, _free_port
from test_inference_generate import (
    PROMPTS, RUN_FLAGS, convert, hf_generate, loaded, tiny_llama, word_tokenizer)

CASES = {  # name -> generate() keyword arguments
    "greedy": dict(max_new_tokens=12),
    "greedy_no_cache": dict(max_new_tokens=12, use_kv_cache=False),
    "beam": dict(max_new_tokens=10, num_beams=3),
    "sampled": dict(max_new_tokens=10, do_sample=True, top_k=20, seed=5),
}
LAYOUTS = {"tp2": ["--target-tensor-parallel-size", "2"],
           "pp2": ["--target-pipeline-parallel-size", "2"]}


def _run_jobs(jobs_file: str) -> None:
    from modellink.inference import generate, load_model, parse_inference_args
    for job in json.loads(open(jobs_file).read()):
        model = load_model(parse_inference_args(job["argv"]))
        try:
            results = {name: [generate(model, p, **kwargs)[0].token_ids for p in PROMPTS[:2]]
                       for name, kwargs in CASES.items()}
        finally:
            model.close()
        if int(os.environ["RANK"]) == 0:
            with open(job["out"], "w") as handle:
                json.dump(results, handle)


def test_tp2_and_pp2_generate_what_tp1_and_transformers_do(tmp_path):
    hf = tiny_llama(tmp_path / "hf")
    tokenizer = word_tokenizer(tmp_path / "tokenizer")
    jobs = []
    for name, layout in LAYOUTS.items():
        flags = convert(tmp_path / "hf", tmp_path / name, *layout)
        run_layout = [f.replace("--target-", "--").replace("parallel-size", "model-parallel-size")
                      for f in layout]
        jobs.append({"argv": flags + run_layout + RUN_FLAGS + [
            "--tokenizer-name-or-path", tokenizer, "--load", str(tmp_path / name)],
            "out": str(tmp_path / f"{name}.json")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", OMP_NUM_THREADS="1",
               MODELLINK_CPU_THREADS="1", PYTHONWARNINGS="ignore")
    launch = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
         f"--master-port={_free_port()}", __file__, str(tmp_path / "jobs.json")],
        env=env, capture_output=True, text=True, timeout=600)
    assert launch.returncode == 0, launch.stdout[-3000:] + launch.stderr[-5000:]

    from modellink.inference import generate
    with loaded(convert(tmp_path / "hf", tmp_path / "tp1") + RUN_FLAGS + [
            "--tokenizer-name-or-path", tokenizer, "--load", str(tmp_path / "tp1")]) as model:
        single = {name: [generate(model, p, **kwargs)[0].token_ids for p in PROMPTS[:2]]
                  for name, kwargs in CASES.items()}
    reference = {"greedy": [hf_generate(hf, p, max_new_tokens=12) for p in PROMPTS[:2]],
                 "beam": [hf_generate(hf, p, max_new_tokens=10, num_beams=3) for p in PROMPTS[:2]]}
    assert single["greedy"] == single["greedy_no_cache"] == reference["greedy"]
    assert single["beam"] == reference["beam"]
    for name in LAYOUTS:
        assert json.loads((tmp_path / f"{name}.json").read_text()) == single, name


if __name__ == "__main__":
    _run_jobs(sys.argv[1])

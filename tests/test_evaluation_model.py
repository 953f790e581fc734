"""evaluation.py on a converted tiny Llama: log-likelihoods and perplexity equal transformers',
the run prints a table per task and writes JSON, and bad input fails in one line."""
import json

import numpy
import pytest
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from modellink.errors import run_cli
from test_evaluation_scoring import write_mmlu
from test_inference_generate import single_process_env, tiny  # noqa: F401 (fixture)


def _dataset(tmp_path) -> str:
    prefix = str(tmp_path / "ppl_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    rng = numpy.random.default_rng(3)
    for length in (30, 17, 41):
        builder.add_document(rng.integers(3, 250, size=length, dtype=numpy.int32), [length])
    builder.finalize(prefix + ".idx")
    return prefix


def test_loglikelihood_and_perplexity_match_transformers(tiny, tmp_path):
    from modellink.evaluation.arguments import parse_evaluation_args
    from modellink.evaluation.lm import ModelLinkLM
    from modellink.evaluation.perplexity import perplexity, windows
    from modellink.inference.model import load_model
    hf, argv, _ = tiny
    prefix = _dataset(tmp_path)
    with single_process_env():
        args = parse_evaluation_args(argv + ["--task", "ppl", "--data-path", prefix,
                                             "--seq-length", "16", "--evaluation-batch-size", "2"])
        model = load_model(args)
        try:
            lm = ModelLinkLM(model, args)
            ours = lm.loglikelihood([("w5 w6 w7", " w8 w9"), ("w40", " w3")])
            result = perplexity(lm, args)
        finally:
            model.close()
            torch.distributed.destroy_process_group()
    with torch.no_grad():
        log_probs = torch.log_softmax(hf(torch.tensor([[5, 6, 7, 8, 9]])).logits[0], -1)
        expected = log_probs[2, 8] + log_probs[3, 9]
        nll, count = 0.0, 0
        for window in windows(prefix, 16, None):
            lp = torch.log_softmax(hf(torch.tensor([window])).logits[0, :-1], -1)
            nll -= lp.gather(1, torch.tensor(window[1:])[:, None]).sum().item()
            count += len(window) - 1
    assert abs(ours[0] - expected.item()) < 1e-4
    assert result.extra["tokens"] == count == 88 - 6  # 88 tokens in 6 windows (5 of 16, 8)
    assert abs(result.extra["nll"] - nll / count) < 1e-5  # the model is random: ppl ~ 2e4


def test_evaluation_cli_prints_tables_and_writes_json(tiny, tmp_path, capsys):
    from modellink.evaluation.runner import run
    _, argv, _ = tiny
    data, _ = write_mmlu(tmp_path)
    out = tmp_path / "results.json"
    with single_process_env():
        results = run(argv + ["--task", "mmlu", "--task-data-path", str(data),
                              "--max-eval-samples", "3", "--evaluation-batch-size", "2",
                              "--eval-output", str(out)])
    printed = capsys.readouterr().out
    assert "algebra" in printed and printed.count("total") == 1
    written = json.loads(out.read_text())
    assert written["mmlu"]["total"]["total"] == 6 == results[0].total
    assert set(written["mmlu"]["subjects"]) == {"algebra", "anatomy"}


@pytest.mark.parametrize("extra,message", [
    (["--task", "mmlu", "--task-data-path", "{tmp}"], "not the MMLU layout"),
    (["--task", "mmlu", "gsm8k", "--task-data-path", "{tmp}"], "one folder per benchmark"),
    (["--task", "ppl"], "--task ppl needs --data-path"),
    (["--task", "squad"], "unknown task 'squad'"),
])
def test_bad_evaluation_input_is_one_line(tiny, tmp_path, capsys, extra, message):
    from modellink.evaluation.runner import run
    _, argv, _ = tiny
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with single_process_env():
        assert run_cli(lambda: run(argv + extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]

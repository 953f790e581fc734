"""The lm-evaluation-harness adapter answers the harness's three request kinds with our model
(skipped where lm-eval is not installed: it is not a dependency)."""
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")

from test_inference_generate import single_process_env, tiny  # noqa: E402,F401 (fixture)


def test_adapter_serves_loglikelihood_rolling_and_generation(tiny):
    from modellink.evaluation.arguments import parse_evaluation_args
    from modellink.evaluation.lm import ModelLinkLM
    from modellink.evaluation.lm_eval_adapter import ModelLinkHarnessLM
    from modellink.inference.model import load_model
    hf, argv, _ = tiny
    with single_process_env():
        args = parse_evaluation_args(argv + ["--task", "lm_eval:demo"])
        model = load_model(args)
        try:
            harness = ModelLinkHarnessLM(ModelLinkLM(model, args), 2, 4)
            (score, _), = harness.loglikelihood([SimpleNamespace(args=("w5 w6", " w7"))])
            rolling, = harness.loglikelihood_rolling([SimpleNamespace(args=("w5 w6 w7",))])
            text, = harness.generate_until([SimpleNamespace(args=("w5 w6", {"until": ["w9"]}))])
        finally:
            model.close()
            torch.distributed.destroy_process_group()
    with torch.no_grad():
        log_probs = torch.log_softmax(hf(torch.tensor([[5, 6, 7]])).logits[0], -1)
    assert abs(score - log_probs[1, 7].item()) < 1e-4
    assert abs(rolling - (log_probs[0, 6] + log_probs[1, 7]).item()) < 1e-4
    assert "w9" not in text

"""ModelLink's flags: docs/modellink_flags.md agrees with the real parsers, flags not supported
yet fail with what ModelLink uses them for, and ModelLink's spellings and defaults (NaN checks,
RoPE base, MC2, timeout, sampling) have their effect."""
import argparse
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest
import torch

from modellink.arguments import build_parser, parse_args
from modellink.data import preprocess_args
from modellink.errors import run_cli
from modellink.evaluation.arguments import add_evaluation_args, parse_evaluation_args
from modellink.inference.arguments import build_inference_parser, parse_inference_args
from modellink.modellink_flags import (
    UNSUPPORTED,
    _NotSupportedYet,
    no_effect_flags,
    unsupported_message,
)
from test_arguments import BASE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "modellink_flags.md"
Row = Tuple[List[str], str, str, str]  # flags, ModelLink's use, status, test file


def _doc_sections() -> Dict[str, List[Row]]:
    sections: Dict[str, List[Row]] = {}
    title = None
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:]
            sections[title] = []
        elif line.startswith("| `") and title is not None:
            flags, use, status, test = [c.strip() for c in line.strip("|").split("|")]
            sections[title].append((re.findall(r"`([^`]+)`", flags), use, status, test))
    return sections


def _accepted(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    return {flag: action for flag, action in parser._option_string_actions.items()
            if not isinstance(action, (_NotSupportedYet, preprocess_args._NotSupportedYet,
                                       argparse._HelpAction))}


PARSERS = {"pretrain_gpt.py": build_parser(), "inference.py": build_inference_parser(),
           "evaluation.py": build_inference_parser(add_evaluation_args),
           "preprocess_data.py": preprocess_args.build_parser()}
PREPROCESS_UNSUPPORTED = "Not supported yet (preprocess_data.py)"


def test_every_doc_row_matches_the_parsers_and_every_accepted_flag_has_a_row():
    sections = _doc_sections()
    training = {f for row in sections["pretrain_gpt.py"] for f in row[0]}
    unsupported = [row for title, rows in sections.items() if title.startswith("Not supported")
                   and title != PREPROCESS_UNSUPPORTED for row in rows]
    assert {row[0][0]: row[1] for row in unsupported} == UNSUPPORTED
    preprocess_unsupported = sections[PREPROCESS_UNSUPPORTED]
    assert {row[0][0]: row[1] for row in preprocess_unsupported} == preprocess_args.UNSUPPORTED
    assert all(row[2] == "not supported yet" for row in unsupported + preprocess_unsupported)
    for title, parser in PARSERS.items():
        accepted = _accepted(parser)
        listed = {f for row in sections[title] for f in row[0]}
        for flags, _, status, test in sections[title]:
            assert status.startswith(("works", "works differently: ")), (flags, status)
            for flag in flags:
                assert flag in accepted, f"{title}: {flag} is listed as {status!r} but rejected"
            if test != "—":
                text = (ROOT / "tests" / test).read_text()
                dest = accepted[flags[0]].dest
                assert flags[0] in text or dest in text, f"{test} does not exercise {flags[0]}"
        reused = training if title in ("inference.py", "evaluation.py") else set()
        missing = set(accepted) - listed - reused
        assert not missing, f"{title} accepts flags docs/modellink_flags.md lacks: {missing}"
    rows = {f: row for row in sections["pretrain_gpt.py"] for f in row[0]}
    for flag in no_effect_flags():
        assert "no effect" in rows[flag][2], flag


@pytest.mark.parametrize("flag", sorted(UNSUPPORTED))
def test_unsupported_flag_is_one_line_error_naming_what_modellink_uses_it_for(flag, capsys):
    # Before the missing required flags are noticed, and whatever value follows it.
    assert run_cli(lambda: parse_args([flag, "1"])) == 2
    assert capsys.readouterr().err == f"error: {unsupported_message(flag)}\n"
    assert unsupported_message(flag) == f"{flag} (ModelLink: {UNSUPPORTED[flag]}) is not " \
                                        "supported yet"


@pytest.mark.parametrize("flag", sorted(preprocess_args.UNSUPPORTED))
def test_preprocess_unsupported_flag_is_one_line_error(flag, capsys):
    from modellink.data.preprocess import main
    with pytest.raises(SystemExit) as exit_info:
        main([flag, "1"])
    assert str(exit_info.value) == (f"preprocess_data.py: error: {flag} (ModelLink: "
                                    f"{preprocess_args.UNSUPPORTED[flag]}) is not supported yet")


def test_evaluation_rejects_unsupported_flags_too(capsys):
    assert run_cli(lambda: parse_evaluation_args(["--noisy-gate-policy", "Jitter"])) == 2
    assert capsys.readouterr().err.startswith("error: --noisy-gate-policy (ModelLink: ")


def test_flags_without_effect_and_mc2_without_sequence_parallelism_are_logged():
    args = parse_args(BASE + ["--use-mcore-models",
                              "--no-masked-softmax-fusion", "--no-rope-fusion",
                              "--local-rank", "0", "--use-mc2", "--moe-permutation-async-comm"])
    notes = "\n".join(args.compatibility_notes)
    for flag in no_effect_flags():
        assert f"{flag} has no effect" in notes
    assert not args.use_mc2 and "--use-mc2 is off" in notes
    args = parse_args(BASE + ["--use-mc2", "--tensor-model-parallel-size", "2"], world_size=2)
    assert not args.use_mc2 and "--sequence-parallel" in args.compatibility_notes[-1]
    args = parse_args(BASE + ["--use-mc2", "--tensor-model-parallel-size", "2",
                              "--sequence-parallel"], world_size=2)
    assert args.use_mc2 and args.compatibility_notes == []


def test_nan_check_is_on_by_default_with_modellink_opt_out():
    assert parse_args(BASE).check_for_nan_in_loss_and_grad
    assert parse_args(BASE + ["--check-for-nan-in-loss-and-grad"]).check_for_nan_in_loss_and_grad
    assert not parse_args(BASE + ["--no-check-for-nan-in-loss-and-grad"]
                          ).check_for_nan_in_loss_and_grad
    # fp16 with dynamic loss scaling: overflow is the scaler's signal (Megatron-LM's rule).
    dynamic = parse_args(BASE + ["--fp16"])
    assert not dynamic.check_for_nan_in_loss_and_grad
    assert "NaN/Inf checking is off" in dynamic.compatibility_notes[-1]
    assert parse_args(BASE + ["--fp16", "--loss-scale", "1024"]).check_for_nan_in_loss_and_grad


def test_rope_spellings_build_the_same_model_with_a_float_base():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    rope = ["--position-embedding-type", "rope"]
    # The model is built from the parsed arguments alone: equal arguments, equal logits.
    assert vars(parse_args(BASE + rope + ["--rotary-base", "1e6"])) == \
        vars(parse_args(BASE + rope + ["--rotary-base", "1000000"]))
    assert vars(parse_args(BASE + ["--use-rotary-position-embeddings"])) == \
        vars(parse_args(BASE + rope))
    base = parse_args(BASE + rope + ["--rotary-base", "5e5"]).rotary_base
    rotary = RotaryEmbedding(kv_channels=16, rotary_percent=1.0, rotary_base=base,
                             use_cpu_initialization=True)
    want = 1.0 / (500000.0 ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16))
    torch.testing.assert_close(rotary.inv_freq.double(), want, rtol=1e-6, atol=0)


def test_distributed_timeout_reaches_every_process_group():
    """megatron-core creates the TP/PP/DP/CP groups with a timeout of its own (30 minutes)
    unless it is handed the flag's."""
    from megatron.core import parallel_state
    from modellink.training.initialize import initialize, shutdown
    from test_inference_generate import single_process_env
    with single_process_env():
        initialize(parse_args(BASE + ["--device", "cpu", "--distributed-timeout-minutes", "7"]))
        try:
            groups = [torch.distributed.group.WORLD, parallel_state.get_data_parallel_group(),
                      parallel_state.get_tensor_model_parallel_group(),
                      parallel_state.get_pipeline_model_parallel_group(),
                      parallel_state.get_context_parallel_group()]
            timeouts = [g._get_backend(torch.device("cpu")).options._timeout for g in groups]
        finally:
            shutdown()
    assert timeouts == [timedelta(minutes=7)] * len(groups)


def test_modellink_defaults_for_timeout_and_sampling(tmp_path):
    from modellink.inference.tasks import _config
    assert parse_args(BASE).distributed_timeout_minutes == 45
    model = BASE + ["--load", str(tmp_path), "--max-length", "32"]
    args = parse_inference_args(model, world_size=1)
    assert (args.top_k, args.top_p, args.temperature) == (50, 0.95, 0.7)
    fmt = SimpleNamespace(stop_ids=lambda: (2,))
    assert not _config(args, fmt, "greedy").do_sample and not _config(args, fmt, "beam_search").do_sample
    assert _config(args, fmt, "do_sample").do_sample
    evaluation = model + ["--task", "lm_eval:demo", "--eval-output", str(tmp_path / "r.json")]
    args = parse_evaluation_args(evaluation, world_size=1)
    assert (args.top_k, args.top_p, args.temperature) == (0, 0.9, 0.5)
    assert not args.sample_replies  # greedy answers, as ModelLink's evaluation gives
    assert parse_evaluation_args(evaluation + ["--temperature", "0.5"], world_size=1).sample_replies
    assert not parse_evaluation_args(evaluation + ["--top-k", "5", "--greedy"],
                                     world_size=1).sample_replies

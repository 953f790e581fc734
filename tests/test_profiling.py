"""`--profile*` writes a torch profiler trace that Chrome-trace tooling can open."""
import json

from conftest import TINY_LLAMA, train_history


def test_profile_writes_chrome_trace(tmp_path):
    out = tmp_path / "profile"
    train_history(tmp_path, TINY_LLAMA + [
        "--train-iters", "4", "--profile", "--profile-step-start", "1", "--profile-step-end", "3",
        "--profile-ranks", "0", "--profile-level", "level1", "--profile-record-shapes",
        "--profile-with-memory", "--profile-with-stack", "--profile-save-path", str(out)],
        nproc=1)
    traces = list(out.glob("rank0*.pt.trace.json"))
    assert len(traces) == 1, list(out.iterdir())
    events = json.loads(traces[0].read_text())["traceEvents"]
    steps = {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert steps == {"ProfilerStep#0", "ProfilerStep#1"}
    assert any(e.get("cat") == "cpu_op" and "mm" in e["name"] for e in events)

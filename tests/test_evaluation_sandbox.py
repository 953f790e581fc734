"""The HumanEval sandbox contains each escape route the old name-swapping one let through: every
escape program below would pass only if its escape worked, and the evaluator's side checks that
nothing outside changed. Scores of right and wrong solutions are the same with and without the
OS isolation; without it, generated code runs only behind the explicit unsafe flag."""
import os
import shutil
import socket
import subprocess
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from modellink.argument_errors import ArgumentError
from modellink.evaluation.questions import CodeProblem
from modellink.evaluation.sandbox import launch, run_program
from modellink.evaluation.scoring import score

# Where the OS itself forbids user namespaces the sandbox cannot work; anywhere else it must.
pytestmark = pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"], capture_output=True).returncode != 0,
    reason="this OS does not allow unprivileged user namespaces")


@pytest.fixture
def outside():
    """A folder with a file the program must not change, on the real disk outside the
    evaluator's /tmp (where a CI checkout may live)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as folder:
        victim = Path(folder) / "victim.txt"
        victim.write_text("keep")
        yield victim
        assert victim.read_text() == "keep" and os.listdir(folder) == ["victim.txt"]


@pytest.mark.parametrize("escape", [
    "open(VICTIM, 'w').write('gone')",
    "__import__('os').remove(VICTIM)",
    "import importlib, os\nimportlib.reload(os).unlink(VICTIM)",
    "import posix\nassert posix.system(f'rm {VICTIM} && touch {VICTIM}.new') == 0",
    "import ctypes\nassert ctypes.CDLL(None).unlink(VICTIM.encode()) == 0",
])
def test_files_outside_the_temp_dir_cannot_change(outside, escape):
    result = run_program(f"VICTIM = {str(outside)!r}\n{escape}\n", timeout=5)
    assert not result.passed and "passed" not in result.reason


def test_the_temp_dir_is_writable_and_the_environment_empty():
    program = ("import os\nopen('scratch.txt', 'w').write('ok')\n"
               "assert open('scratch.txt').read() == 'ok'\n"
               "assert set(os.environ) <= {'PATH', 'LC_ALL'}, os.environ\n")
    assert run_program(program, timeout=5).passed


def test_no_network_even_to_the_evaluators_loopback():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        program = ("import _socket\ns = _socket.socket()\ns.settimeout(2)\n"
                   f"s.connect(('127.0.0.1', {port}))\n")
        result = run_program(program, timeout=5)
        assert not result.passed and "Error" in result.reason
        with pytest.raises(BlockingIOError):
            server.accept()


def test_the_evaluators_environment_and_processes_are_out_of_reach(monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("MODELLINK_TEST_SECRET", secret)
    victim = subprocess.Popen(["sleep", "30"])  # started with the secret in its environment
    try:
        program = (f"import os\nSECRET = {secret!r}\n"
                   f"found = [open(f'/proc/{{p}}/environ').read() for p in ({victim.pid}, "
                   f"{os.getpid()}, os.getppid()) if os.path.exists(f'/proc/{{p}}/environ')]\n"
                   "assert any(SECRET in e for e in found) or SECRET in str(os.environ)\n")
        result = run_program(program, timeout=5)
        assert not result.passed and secret not in result.reason
        program = f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)\n"
        result = run_program(program, timeout=5)
        assert not result.passed and "ProcessLookupError" in result.reason
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def _processes_running(marker: str) -> list:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass  # exited while we looked
    return found


def test_a_setsid_grandchild_dies_at_the_time_limit():
    marker = f"999.{uuid.uuid4().int % 10**9}"  # a unique `sleep` argument to look for
    program = ("import subprocess, time\n"
               f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
               "time.sleep(60)\n")
    start = time.monotonic()
    result = run_program(program, timeout=1.0)
    assert result == launch.RunResult(False, "timed out")
    assert time.monotonic() - start < 4 and not _processes_running(marker)


def test_a_grandchild_holding_stderr_does_not_hold_the_evaluator():
    program = ("import os, sys, time\n"
               "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
               "sys.exit(3)\n")
    start = time.monotonic()
    assert run_program(program, timeout=30).reason == "exit status 3"
    assert time.monotonic() - start < 5


def test_output_flooding_is_capped():
    program = "import sys\nwhile True:\n    sys.stderr.write('x' * 65536)\n"
    tracemalloc.start()
    try:
        assert run_program(program, timeout=1.5) == launch.RunResult(False, "timed out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * launch.OUTPUT_LIMIT_BYTES  # the program wrote hundreds of MiB
    result = run_program("print('y' * 10**6)\nraise SystemExit(1)\n", timeout=5)
    assert result.reason == "y" * launch.REASON_CHARS


def test_memory_and_process_count_are_bounded():
    big = run_program("x = bytearray(3 * 2**30)\n", timeout=5)
    assert big.reason == "MemoryError"
    program = ("import os, time\n"
               "for _ in range(100):\n"
               "    if os.fork() == 0:\n        time.sleep(30)\n        os._exit(0)\n")
    assert "BlockingIOError" in run_program(program, timeout=5).reason


def _problems(completions):
    return [CodeProblem(f"p{i}", f"def f{i}(x):\n", "def check(candidate):\n"
                        "    assert candidate(1) == 2\n    assert candidate(-1) == 0\n", f"f{i}")
            for i in range(len(completions))]


class Writes:
    """A fake model whose completion for problem i is completions[i]."""
    chat = False

    def __init__(self, completions):
        self.completions = completions

    def generate(self, prompts, max_new_tokens):
        return [self.completions[int(p.split("(")[0][len("def f"):])] for p in prompts]


COMPLETIONS = [
    "    return x + 1\n",                                # right
    "    return x * 2\n",                                # wrong
    "    import numpy\n    return int(numpy.add(x, 1))\n",  # right, with numpy
    "    while True:\n        pass\n",                   # too slow
    "    return x + 1\nimport sys\nsys.exit(0)\n",       # exits 0 before the tests run
    "    return x + 1\nimport os\nos._exit(0)\n",        # the same, without cleanup
    "    print('ok')\n    return 1 + x\n",               # right, and talks
]


def test_scores_are_the_same_with_and_without_isolation(monkeypatch):
    problems = _problems(COMPLETIONS)
    isolated = score("human_eval", Writes(COMPLETIONS), problems, timeout=2.0)
    monkeypatch.setattr(launch, "isolation_problem", lambda: "forced by the test")
    with pytest.raises(ArgumentError, match="--unsafe-run-generated-code"):
        score("human_eval", Writes(COMPLETIONS), problems, timeout=2.0)
    plain = score("human_eval", Writes(COMPLETIONS), problems, timeout=2.0,
                  allow_unisolated=True)
    passes = [1, 0, 1, 0, 0, 0, 1]
    assert isolated.subjects == plain.subjects == {
        f"p{i}": [passed, 1] for i, passed in enumerate(passes)}


def _evaluation_argv(tiny_llama, tmp_path, *extra):
    return tiny_llama + ["--load", str(tmp_path), "--tokenizer-type", "NullTokenizer",
                         "--vocab-size", "256", "--task", "human_eval",
                         "--task-data-path", str(tmp_path), *extra]


def test_without_isolation_human_eval_needs_the_unsafe_flag(tiny_llama, tmp_path, monkeypatch):
    from modellink.evaluation.arguments import parse_evaluation_args
    monkeypatch.setattr(launch, "isolation_problem", lambda: "unshare: Operation not permitted")
    argv = _evaluation_argv(tiny_llama, tmp_path, "--eval-output", str(tmp_path / "r.json"))
    with pytest.raises(ArgumentError, match=r"cannot sandbox it \(unshare: Operation not "
                                            r"permitted\); pass --unsafe-run-generated-code"):
        parse_evaluation_args(argv, world_size=1)
    args = parse_evaluation_args(argv + ["--unsafe-run-generated-code"], world_size=1)
    assert args.unsafe_run_generated_code


@pytest.mark.parametrize("extra,message", [
    (["--human-eval-timeout", "0"], "--human-eval-timeout must be a number of seconds > 0"),
    (["--human-eval-timeout", "nan"], "--human-eval-timeout must be a number of seconds > 0"),
    (["--eval-output", "{tmp}"], "is a folder"),
    (["--eval-output", "{tmp}/missing/r.json"], "does not exist"),
    (["--eval-output", "/proc/r.json"], "cannot write in /proc"),
])
def test_bad_evaluation_flags_fail_before_any_work(tiny_llama, tmp_path, extra, message):
    from modellink.evaluation.arguments import parse_evaluation_args
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with pytest.raises(ArgumentError, match=message):
        parse_evaluation_args(_evaluation_argv(tiny_llama, tmp_path, *extra), world_size=1)


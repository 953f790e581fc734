"""Run untrusted generated code: a separate Python process in a temporary folder, in its own
session (killed whole on timeout), with a memory cap, and with networking, subprocesses and
file removal disabled before the program starts. Never exec'd in the evaluator's process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

MEMORY_LIMIT_BYTES = 2 * 2**30

# Prepended to the program: what the program could use to reach out or do damage is gone
# (after the prelude's own imports, so the interpreter still starts).
_PRELUDE = f"""
import builtins, os, resource, shutil, socket, subprocess
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT_BYTES}, {MEMORY_LIMIT_BYTES}))
def _blocked(*args, **kwargs):
    raise PermissionError("disabled in the evaluation sandbox")
for _name in ("socket", "create_connection", "create_server", "getaddrinfo", "socketpair"):
    setattr(socket, _name, _blocked)
for _name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "remove", "unlink",
              "rmdir", "removedirs", "rename", "replace", "truncate", "putenv", "chmod",
              "execv", "execve", "execvp", "spawnv"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
del _name
"""


@dataclass(frozen=True)
class RunResult:
    passed: bool
    reason: str  # "passed", "timed out", or the last line of the error


def run_program(program: str, timeout: float) -> RunResult:
    """Run `program` with a wall-clock limit; passed when it exits 0."""
    with tempfile.TemporaryDirectory(prefix="modellink_sandbox_") as folder:
        path = os.path.join(folder, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_PRELUDE + "\n" + program)
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": "0",
               "no_proxy": "*", "http_proxy": "http://0.0.0.0:9", "https_proxy": "http://0.0.0.0:9"}
        process = subprocess.Popen([sys.executable, "-I", path], cwd=folder, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the whole session, children included
            process.communicate()
            return RunResult(False, "timed out")
    if process.returncode == 0:
        return RunResult(True, "passed")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return RunResult(False, lines[-1] if lines else f"exit status {process.returncode}")

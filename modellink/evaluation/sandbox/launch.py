"""The evaluator's side of the sandbox: start jail.py on one program, feed it the program and a
fresh token, read its output with a hard cap and a hard deadline, and decide pass or fail from
the token alone (the program's exit status can be forged, the token cannot be guessed)."""
from __future__ import annotations

import functools
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from modellink.argument_errors import ArgumentError
from modellink.evaluation.sandbox import jail

UNSAFE_FLAG = "--unsafe-run-generated-code"
OUTPUT_LIMIT_BYTES = 64 * 1024  # the tail of the program's stdout+stderr kept for the reason
REASON_CHARS = 200
# How long past the time limit the evaluator waits for the launcher to stop the program
# before it kills the launcher's process group itself.
GRACE_SECONDS = 5.0
PROBE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RunResult:
    passed: bool
    reason: str  # "passed", "timed out", or what went wrong (the last line of the error)


def _read_until(process: subprocess.Popen, status_fd: int,
                deadline: float) -> Tuple[bytes, bytes]:
    """(output tail, status bytes): read both pipes until they close or the deadline passes,
    keeping at most OUTPUT_LIMIT_BYTES of output however much the program writes."""
    output, status = bytearray(), bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout.fileno(), selectors.EVENT_READ, output)
        selector.register(status_fd, selectors.EVENT_READ, status)
        while selector.get_map() and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                key.data.extend(chunk)
                del key.data[:-OUTPUT_LIMIT_BYTES]
    return bytes(output), bytes(status)


def _reason(code: Optional[int], output: bytes) -> str:
    if code is None or code == jail.TIMED_OUT:
        return "timed out"
    lines = output.decode("utf-8", "replace").strip().splitlines()
    if lines:
        return lines[-1][:REASON_CHARS]
    if code == 0:
        return "exited before its tests finished"
    if code > 128:
        return f"killed by {signal.Signals(code - 128).name}"
    return f"exit status {code}"


def launch(program: str, timeout: float, isolated: bool) -> RunResult:
    """Run `program` once in jail.py, isolated by the OS or (unsafe) only limited."""
    token = secrets.token_hex(16)
    status_read, status_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", jail.__file__, repr(timeout), str(status_write),
             "isolated" if isolated else "plain"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(status_write,), env={}, start_new_session=True)
    finally:
        os.close(status_write)
    deadline = time.monotonic() + timeout + GRACE_SECONDS
    try:
        with process:
            try:
                process.stdin.write(f"{token}\n{program}".encode())
                process.stdin.close()
            except BrokenPipeError:
                pass  # the launcher failed before reading; its output says why
            output, status = _read_until(process, status_read, deadline)
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = None
    finally:
        os.close(status_read)
    if status == token.encode():
        return RunResult(True, "passed")
    return RunResult(False, _reason(code, output))


@functools.lru_cache(maxsize=None)
def isolation_problem() -> Optional[str]:
    """None when this OS can run programs in the sandbox, otherwise why it cannot."""
    result = launch("pass\n", PROBE_TIMEOUT_SECONDS, isolated=True)
    return None if result.passed else result.reason


def refusal(problem: str) -> str:
    return (f"HumanEval runs generated code and this OS cannot sandbox it ({problem}); "
            f"pass {UNSAFE_FLAG} to run it with resource limits only")


def run_program(program: str, timeout: float, allow_unisolated: bool = False) -> RunResult:
    """Run untrusted `program` with a wall-clock limit; it passes when it ran to its end.
    Without OS isolation it runs only when `allow_unisolated` (the user's unsafe flag)."""
    problem = isolation_problem()
    if problem is not None and not allow_unisolated:
        raise ArgumentError(refusal(problem))
    return launch(program, timeout, isolated=problem is None)

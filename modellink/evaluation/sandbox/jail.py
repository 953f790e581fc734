"""The launcher that runs one untrusted program, executed as a script by a fresh interpreter
(`python -I -S jail.py TIMEOUT STATUS_FD isolated|plain`; the evaluator imports it only for its
path and exit codes). Standard library only, so that it starts fast and shares no state with
the evaluator.

stdin carries a one-line token and then the program. The program runs under a wrapper that
writes the token to STATUS_FD only after the program (tests included) returned normally, so an
early `sys.exit(0)` or `os._exit(0)` is not a pass.

Isolated: this launcher forks a supervisor into new user, mount, network, IPC, UTS and pid
namespaces and maps its users (see `_map_users`). The supervisor forks the program's process,
pid 1 of the new pid namespace, which makes every mount read-only, gives the program a fresh
scratch folder, /run, /dev and /proc, sets resource limits, drops its capabilities and execs
Python on the program. At the deadline the supervisor, which the program can neither see nor signal,
kills pid 1, and the kernel kills everything else in the namespace with it.

Plain (the user accepted running unisolated code): the same limits and deadline, in a new
session killed as a group, with no namespaces.
"""
import ctypes
import errno
import fcntl
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time

TIMED_OUT = 124
SETUP_FAILED = 125
MEMORY_BYTES = 2 * 2**30  # address space per process
MAX_PROCESSES = 32
MAX_FILE_BYTES = 16 * 2**20
MAX_OPEN_FILES = 256
TMP_MOUNT_OPTIONS = "size=64m,nr_inodes=4096,mode=700"
# The program's working directory and only writable place; Python's tempfile falls back to it
# since /tmp is read-only.
SCRATCH = "/run/scratch"
DEVICES = ("null", "zero", "random", "urandom")
PROGRAM = "program.py"
# Reads the token from fd 4 and reports it on fd 3 once the program returned.
WRAPPER = ("import os, runpy, sys\n"
           "token = os.read(4, 64)\n"
           "os.close(4)\n"
           f"sys.argv = [{PROGRAM!r}]\n"
           f"runpy.run_path({PROGRAM!r}, run_name='__main__')\n"
           "sys.stdout.flush()\n"
           "sys.stderr.flush()\n"
           "os.write(3, token)\n")
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x2000, 0x4000, 0x40000
READ_ONLY_BIND = MS_REMOUNT | MS_BIND | MS_RDONLY
# Flags a mount inherited from a more privileged namespace keeps locked: a remount must repeat them.
LOCKED_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
PR_SET_PDEATHSIG, PR_SET_KEEPCAPS, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 8, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
CAPABILITY_VERSION_3, CAP_DAC_READ_SEARCH = 0x20080522, 2
PROGRAM_ID, NOBODY = 1, 65534  # the program's user inside and outside when root launches it

_libc = ctypes.CDLL(None, use_errno=True)


def _call(name, *args, subject=""):
    if getattr(_libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}{subject}: {os.strerror(error)}")


def _encode(text):
    return None if text is None else text.encode()


def _mount(source, target, fstype, flags, data=None):
    _call("mount", _encode(source), _encode(target), _encode(fstype), ctypes.c_ulong(flags),
          _encode(data), subject=f" {target}")


def _mounts():
    """(mount point, locked flags) of every mount this namespace sees."""
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            flags = sum(LOCKED_OPTIONS.get(option, 0) for option in fields[5].split(","))
            yield point, flags


def _build_file_system(source, owner):
    """Everything read-only; an empty size-capped scratch folder as the only writable place
    (the cwd); /run and /dev replaced (no host sockets or devices) and a /proc of this pid namespace."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    for point, flags in list(_mounts()):
        try:
            _mount(None, point, None, READ_ONLY_BIND | flags)
        except OSError as error:
            # Under a folder our user may not enter, or gone: the program cannot reach it either.
            if error.errno not in (errno.ENOENT, errno.EACCES):
                raise
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    os.mkdir("/run/dev")
    _mount("tmpfs", "/run/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for name in DEVICES:
        open(f"/run/dev/{name}", "w").close()
        _mount(f"/dev/{name}", f"/run/dev/{name}", None, MS_BIND)
    os.symlink("/proc/self/fd", "/run/dev/fd")
    _mount("/run/dev", "/dev", None, MS_MOVE)
    _mount(None, "/dev", None, READ_ONLY_BIND | MS_NOSUID | MS_NOEXEC)
    os.rmdir("/run/dev")
    # The scratch folder is a new mount point, not one over /tmp: the evaluator's interpreter
    # may live under /tmp (a virtualenv in a CI checkout there), and the program execs it.
    os.mkdir(SCRATCH)
    _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV,
           f"{TMP_MOUNT_OPTIONS},uid={owner},gid={owner}")
    _mount(None, "/run", None, READ_ONLY_BIND | MS_NOSUID | MS_NODEV)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY)
    os.chdir(SCRATCH)
    with open(PROGRAM, "wb") as handle:
        handle.write(source)


def _limit(timeout):
    cpu = math.ceil(timeout) + 1
    for limit, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, MEMORY_BYTES),
                         (resource.RLIMIT_NPROC, MAX_PROCESSES),
                         (resource.RLIMIT_FSIZE, MAX_FILE_BYTES),
                         (resource.RLIMIT_NOFILE, MAX_OPEN_FILES), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def _capabilities(keep):
    """Only `keep` (a capability number or None) survives exec; without it the program cannot
    remount, unmount or mount anything. An empty bounding set is enough for the namespace's
    root (its inheritable and ambient sets are already empty); another user keeps `keep` as an
    ambient capability."""
    with open("/proc/sys/kernel/cap_last_cap", "rb") as handle:
        last = int(handle.read())
    for capability in range(last + 1):
        if capability != keep:
            _call("prctl", PR_CAPBSET_DROP, capability, 0, 0, 0)
    if keep is None:
        return
    _call("prctl", PR_SET_KEEPCAPS, 1, 0, 0, 0)
    os.setgroups([])
    os.setresgid(PROGRAM_ID, PROGRAM_ID, PROGRAM_ID)
    os.setresuid(PROGRAM_ID, PROGRAM_ID, PROGRAM_ID)
    header = (ctypes.c_uint32 * 2)(CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(*([1 << keep] * 3), 0, 0, 0)  # effective, permitted, inheritable
    _call("capset", header, data)
    _call("prctl", PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, keep, 0, 0)


def _exec_program(token, status_fd):
    """Hand the token over on fd 4 and the status pipe on fd 3, then become the program."""
    read_end, write_end = os.pipe()
    os.write(write_end, token)
    os.close(write_end)
    # Above 4 first: either pipe end may itself be fd 3 or 4.
    status, read_end = (fcntl.fcntl(fd, fcntl.F_DUPFD, 5) for fd in (status_fd, read_end))
    os.dup2(status, 3)
    os.dup2(read_end, 4)
    os.closerange(5, MAX_OPEN_FILES)
    _call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    os.execve(sys.executable, [sys.executable, "-I", "-c", WRAPPER], ENVIRONMENT)


def _supervise(pid, timeout, kill):
    """Exit status of the child `pid` (128 + signal when killed), or TIMED_OUT after killing
    it at the deadline. SIGCHLD must be blocked before the fork."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            if code < 0:
                return 128 - code
            return 1 if code in (TIMED_OUT, SETUP_FAILED) else code
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            kill(pid)
            os.waitpid(pid, 0)
            return TIMED_OUT
        signal.sigtimedwait([signal.SIGCHLD], remaining)


def _fail(error):
    os.write(2, f"sandbox setup failed: {error}\n".encode())
    os._exit(SETUP_FAILED)


def _program_process(source, token, status_fd, timeout, isolated, as_root=False):
    """The forked child that becomes the program; never returns."""
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        _call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        os.setsid()
        if isolated:
            _build_file_system(source, PROGRAM_ID if as_root else 0)
        _limit(timeout)
        if isolated:
            _capabilities(CAP_DAC_READ_SEARCH if as_root else None)
        _exec_program(token, status_fd)
    except OSError as error:
        _fail(error)


def _map_users(pid, as_root):
    """The namespace's root is the evaluator's user. Root gets a second user for the program,
    `nobody` outside, because root (alone) ignores RLIMIT_NPROC; that user reads root's
    folders (an interpreter under /root) through CAP_DAC_READ_SEARCH, which the kernel grants
    only over files of users mapped here. A user other than root may map only itself."""
    uid, gid = os.getuid(), os.getgid()
    lines = {"uid_map": f"0 {uid} 1\n", "gid_map": f"0 {gid} 1\n"}
    if as_root:
        lines = {name: f"{text}{PROGRAM_ID} {NOBODY} 1\n" for name, text in lines.items()}
    else:
        lines = {"setgroups": "deny", **lines}
    for name, text in lines.items():
        with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as handle:
            handle.write(text)


def _run_isolated(source, token, status_fd, timeout):
    """Fork a supervisor into new user, mount, network, IPC, UTS and pid namespaces; map its
    users from out here; it runs the program as pid 1 of the pid namespace."""
    as_root = os.getuid() == 0
    ready_read, ready_write = os.pipe()
    mapped_read, mapped_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_read)
        os.close(mapped_write)
        try:
            _call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            _call("unshare", CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC
                  | CLONE_NEWUTS | CLONE_NEWPID)
            os.write(ready_write, b"1")
            if os.read(mapped_read, 1) != b"1":
                raise OSError(errno.EPERM, "the launcher could not map the namespace's users")
        except OSError as error:
            _fail(error)
        child = os.fork()
        if child == 0:
            _program_process(source, token, status_fd, timeout, isolated=True, as_root=as_root)
        os._exit(_supervise(child, timeout, lambda p: os.kill(p, signal.SIGKILL)))
    os.close(ready_write)
    os.close(mapped_read)
    if os.read(ready_read, 1) == b"1":
        try:
            _map_users(pid, as_root)
            os.write(mapped_write, b"1")
        except OSError as error:
            os.write(2, f"sandbox setup failed: mapping users: {error}\n".encode())
    os.close(mapped_write)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run_plain(source, token, status_fd, timeout):
    folder = tempfile.mkdtemp(prefix="modellink_sandbox_")
    try:
        os.chdir(folder)
        with open(PROGRAM, "wb") as handle:
            handle.write(source)
        pid = os.fork()
        if pid == 0:
            _program_process(source, token, status_fd, timeout, isolated=False)
        return _supervise(pid, timeout, lambda p: os.killpg(p, signal.SIGKILL))
    finally:
        os.chdir("/")
        shutil.rmtree(folder, ignore_errors=True)


def main():
    timeout, status_fd, mode = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    token = sys.stdin.buffer.readline().strip()
    source = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    run = _run_isolated if mode == "isolated" else _run_plain
    code = run(source, token, status_fd, timeout)
    sys.stdout.flush()
    os._exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main()

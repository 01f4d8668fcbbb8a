"""Sandboxed execution of model-written Python: bubblewrap namespaces + rlimits + an unprivileged uid.

Model output is hostile input. Facts checked on the reference machine (see the reward issue):
  * rlimits alone are not enough: CI runs as root and root ignores RLIMIT_NPROC, so a root parent drops the
    child to `nobody` (uid/gid 65534) *before* exec'ing bubblewrap (Popen user=/group=, no preexec_fn, so it is
    safe from the thread pool in `execute_many`). `bwrap --uid 65534` alone is not enough: it only relabels
    uid 0 inside a user namespace, and the process is still root to the kernel's NPROC check.
  * a venv python under /root (mode 700) is unreachable for `nobody`; the snippet only needs the standard
    library, so the child runs the system interpreter (`/usr/bin/python3`) in isolated mode (`-I`).
  * `nobody` can write to /tmp, so the filesystem is isolated too: a read-only view of `/`, a private
    size-capped tmpfs on /tmp holding the fresh working directory (it vanishes with the mount namespace),
    and private tmpfs over /home, /root, /run and /var/tmp.
The command line (built by `bwrap_command`):
  bwrap --ro-bind / / --dev /dev --proc /proc --size 64MiB --tmpfs /tmp --tmpfs /home --tmpfs /root
        --tmpfs /run --tmpfs /var/tmp --dir /tmp/work --chdir /tmp/work --setenv HOME /tmp/work
        --unshare-all --die-with-parent --new-session /usr/bin/python3 -I -c RUNNER
with an empty environment, run as uid/gid 65534 when the parent is root. `--unshare-all` gives new user, pid,
network (loopback only), ipc, uts and cgroup namespaces. The RUNNER (our code, in the child, before the
snippet) sets RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC and RLIMIT_FSIZE; the parent enforces a wall-clock timeout
and SIGKILLs the bwrap process group, and --die-with-parent + the pid namespace take every descendant with it.
If bubblewrap (or the interpreter, or user namespaces) is missing, `sandbox_status()` says why and
`execute_snippet` raises: model output is never run unsandboxed.

Outcomes: ok | syntax_error | name_error | runtime_error | timeout | killed. `name_error` covers NameError and
ModuleNotFoundError: CoNaLa snippets are fragments over free variables (`df`, `mylist`) and third-party
modules the sandbox does not have, so "ran until it needed an undefined input" is its own class.
"""
from __future__ import annotations

import ast
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

OUTCOMES = ("ok", "syntax_error", "name_error", "runtime_error", "timeout", "killed")
NOBODY = 65534  # uid/gid the child drops to when the parent is root
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
TMPFS_BYTES = 64 << 20  # private /tmp (working dir included): a write flood fills 64 MiB of RAM, not the disk
MEMORY_BYTES = 512 << 20  # RLIMIT_AS: the interpreter needs ~30 MiB; a 50 GB allocation fails with MemoryError
NPROC = 32  # RLIMIT_NPROC: counted per uid inside the sandbox's user namespace, so it bounds a fork bomb
FSIZE_BYTES = 8 << 20  # RLIMIT_FSIZE: largest file the child may write (also caps its report file)
HIDDEN_DIRS = ("/home", "/root", "/run", "/var/tmp")  # covered by empty tmpfs: no secrets, no shared writable dirs
SNIPPET_FILENAME = "<snippet>"  # filename for parsing model output; its compile warnings ("invalid escape") are noise
warnings.filterwarnings("ignore", module=SNIPPET_FILENAME)  # only warnings attributed to that filename

# Runs inside the sandbox before the snippet. It reads "<nonce>\n<code>" from stdin, sets the rlimits, points
# fds 0-2 at /dev/null (so output floods cost nothing) and reports "<nonce> <outcome> <detail>" on a dup of the
# original stdout. A snippet that os._exit()s skips the report; a snippet that inspects the runner's frame
# could forge it -- acceptable for a reward signal, not for a security boundary (the namespaces are that).
RUNNER = r'''
import os, resource, sys
def main():
    nonce = sys.stdin.readline().strip()
    src = sys.stdin.read()
    cpu = int(sys.argv[1])
    for res, lim in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (%(as)d, %(as)d)),
                     (resource.RLIMIT_NPROC, (%(nproc)d, %(nproc)d)), (resource.RLIMIT_FSIZE, (%(fsize)d, %(fsize)d))):
        resource.setrlimit(res, lim)
    report = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    pid, kind, detail = os.getpid(), "ok", ""
    try:
        code = compile(src, "<snippet>", "exec")
    except (SyntaxError, ValueError) as e:
        kind, detail = "syntax_error", repr(e)
    else:
        try:
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as e:
            if e.code not in (None, 0):
                kind, detail = "runtime_error", "SystemExit(%%r)" %% (e.code,)
        except (NameError, ModuleNotFoundError) as e:
            kind, detail = "name_error", "%%s: %%s" %% (type(e).__name__, e)
        except BaseException as e:
            kind, detail = "runtime_error", "%%s: %%s" %% (type(e).__name__, e)
    if os.getpid() == pid:  # forked children of the snippet never report
        os.write(report, ("%%s %%s %%s\n" %% (nonce, kind, " ".join(detail.split())[:300])).encode())
    os._exit(0)  # skip atexit hooks and non-daemon threads the snippet may have left
main()
''' % {"as": MEMORY_BYTES, "nproc": NPROC, "fsize": FSIZE_BYTES}


class SandboxUnavailable(RuntimeError):
    """No isolation on this machine: execution is disabled (see `sandbox_status()`)."""


@dataclass(frozen=True)
class ExecResult:
    outcome: str  # one of OUTCOMES
    detail: str = ""  # exception text, exit status, or why it was classified so
    seconds: float = 0.0  # wall-clock time in the sandbox (0 when decided without running)


def find_python() -> str | None:
    """The system interpreter: reachable by `nobody`, unlike a venv under /root."""
    return next((p for p in PYTHON_CANDIDATES if os.access(p, os.X_OK)), None)


def bwrap_command(python: str) -> list[str]:
    """The bubblewrap command line (see the module docstring for why each part is there)."""
    cmd = [shutil.which("bwrap") or "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    for d in HIDDEN_DIRS:
        if os.path.isdir(d):
            cmd += ["--tmpfs", d]
    cmd += ["--dir", "/tmp/work", "--chdir", "/tmp/work", "--setenv", "HOME", "/tmp/work",
            "--unshare-all", "--die-with-parent", "--new-session", python, "-I", "-c", RUNNER]
    return cmd


def _drop_privileges() -> dict:
    """Popen kwargs: a root parent runs the child as nobody (root ignores RLIMIT_NPROC); others keep their uid."""
    if os.geteuid() == 0:
        return dict(user=NOBODY, group=NOBODY, extra_groups=[])
    return {}


def classify(returncode: int, report: str, nonce: str) -> tuple[str, str]:
    """(outcome, detail) from the bwrap exit status and the runner's report file."""
    for line in reversed(report.splitlines()):
        if line.startswith(nonce + " "):
            kind, _, detail = line[len(nonce) + 1:].partition(" ")
            if kind in OUTCOMES:
                return kind, detail
    if returncode < 0 or returncode > 128:  # bwrap exits 128+N when its child dies of signal N
        sig = -returncode if returncode < 0 else returncode - 128
        return "killed", f"signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return "runtime_error", f"exited with status {returncode} without reporting"


def _run_sandboxed(code: str, timeout_s: float, python: str) -> ExecResult:
    nonce = secrets.token_hex(8)
    cpu = max(1, int(timeout_s + 0.999))  # RLIMIT_CPU is whole seconds; the wall clock is the finer limit
    start = time.monotonic()
    # Plain files (not pipes) for stdin/stdout: the child's writes are capped by its RLIMIT_FSIZE, so a
    # snippet flooding its report fd cannot grow the parent's memory.
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout:
        fin.write(f"{nonce}\n{code}".encode("utf-8", "surrogatepass"))
        fin.seek(0)
        proc = subprocess.Popen(bwrap_command(python) + [str(cpu)], stdin=fin, stdout=fout,
                                stderr=subprocess.STDOUT, env={}, cwd="/", start_new_session=True,
                                **_drop_privileges())
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # --die-with-parent then kills the pid namespace
            proc.wait()
            return ExecResult("timeout", f"wall clock > {timeout_s:g} s", time.monotonic() - start)
        fout.seek(0)
        report = fout.read(1 << 16).decode("utf-8", "replace")
    outcome, detail = classify(rc, report, nonce)
    return ExecResult(outcome, detail, time.monotonic() - start)


@functools.lru_cache(maxsize=1)
def sandbox_status() -> tuple[bool, str]:
    """(ok, detail) -- whether snippets can be executed in isolation here, checked by running a probe."""
    if not sys.platform.startswith("linux"):
        return False, f"execution disabled: the sandbox needs Linux namespaces (this is {sys.platform})"
    if shutil.which("bwrap") is None:
        return False, "execution disabled: bubblewrap is not installed (apt-get install bubblewrap)"
    python = find_python()
    if python is None:
        return False, f"execution disabled: no system python3 at {', '.join(PYTHON_CANDIDATES)}"
    # The probe asserts the isolation facts from inside: only loopback, read-only root, private /tmp. (The uid drop
    # is visible only from outside; tests/test_sandbox.py checks it.)
    probe = ("import os\nnets = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
             "assert nets == ['lo'], 'network: %s' % nets\n"
             "try:\n    open('/.sandbox-probe', 'w')\n    raise AssertionError('root filesystem is writable')\n"
             "except OSError:\n    pass\nassert os.listdir('/tmp') == ['work'], 'shared /tmp'\n")
    try:
        res = _run_sandboxed(probe, timeout_s=10.0, python=python)
    except OSError as e:
        return False, f"execution disabled: cannot start bubblewrap ({e})"
    if res.outcome != "ok":
        return False, f"execution disabled: sandbox probe failed ({res.outcome}: {res.detail})"
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    uid = f"uid {NOBODY}" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return True, (f"{version}, {python} -I as {uid}: private user/pid/net/ipc namespaces, read-only /, "
                  f"private {TMPFS_BYTES >> 20} MiB /tmp; rlimits cpu/as={MEMORY_BYTES >> 20}MiB/"
                  f"nproc={NPROC}/fsize={FSIZE_BYTES >> 20}MiB")


def execute_snippet(code: str, timeout_s: float = 2.0) -> ExecResult:
    """Run one snippet in the sandbox -> ExecResult(outcome, detail, seconds). Raises SandboxUnavailable.

    Unparseable code is `syntax_error` without starting a sandbox (`ast.parse` builds a tree, it runs nothing).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    ok, detail = sandbox_status()
    if not ok:
        raise SandboxUnavailable(detail)
    try:
        ast.parse(code, filename=SNIPPET_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return ExecResult("syntax_error", f"{type(e).__name__}: {e}")
    return _run_sandboxed(code, timeout_s, find_python())


def execute_many(codes: list[str], timeout_s: float = 2.0, workers: int = 2) -> list[ExecResult]:
    """execute_snippet over a list, identical code run once, `workers` sandboxes at a time; results in order."""
    unique = list(dict.fromkeys(codes))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(zip(unique, pool.map(lambda c: execute_snippet(c, timeout_s), unique)))
    return [results[c] for c in codes]

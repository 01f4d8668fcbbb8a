"""The host's side of one sandboxed run: the limits it passes, the bubblewrap command line, the
slots (one host uid each), and launching, waiting for, killing and reaping the sandbox.

sandbox.py decides what may run and calls `run_sandboxed`; why each layer is there, with the attack
it stops, is in sandbox.py's docstring. Inside the sandbox, sandbox_supervisor.py's RUNNER is pid 1.
"""
from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

import queue
import threading

from plumbing import sandbox_limits
from plumbing import sandbox_view
from plumbing.sandbox_supervisor import EXIT_CODES, RUNNER

NOBODY = 65534  # the uid/gid a snippet sees inside its user namespace (the one /etc/passwd names)
# A root parent runs slot i as host uid/gid SLOT_UID_BASE + i: Debian policy 9.2.2 reserves
# 65000-65533, so no account owns them, and per-user kernel quotas (fds in flight over Unix sockets,
# pipe buffers) are one snippet's own instead of shared with the snippet running beside it
SLOT_UID_BASE = 65500
SLOTS = 32  # sandboxes at once; more execute_many workers wait for a free slot
# after the kill, how long a task may take to die (uninterruptible I/O) before `unkillable`
KILL_GRACE_S = 5.0
LINGER_LIMIT_S = 600.0  # a later call waits this long for such a task to die, then refuses to run
# private /tmp (working dir included): a write flood fills 64 MiB of RAM, not the disk
TMPFS_BYTES = 64 << 20
# private /dev/shm: POSIX semaphores and shm_open need it writable; 300 MB went here
SHM_BYTES = 16 << 20
# RLIMIT_AS: the interpreter needs ~30 MiB; a 50 GB allocation fails with MemoryError
MEMORY_BYTES = 512 << 20
# RLIMIT_NPROC: counted per uid inside the sandbox's user namespace, so it bounds a fork bomb
NPROC = 32
FSIZE_BYTES = 8 << 20  # RLIMIT_FSIZE: largest file the child may write
# RLIMIT_NOFILE: each open pipe or socket can pin ~200 KB of kernel buffers outside RLIMIT_AS
NOFILE = 64
# memory.max of the optional per-run cgroup: every process and tmpfs page
CGROUP_MEMORY_BYTES = 768 << 20
# A snippet may block for this many timeout_s (idle-equivalent): generous, since one waiting on its
# own subprocess also waits out that subprocess's wait for a CPU
BLOCKED_FACTOR = 4.0
# The host's wall clock, for a supervisor that cannot act (a starved machine): 30 x timeout_s
# + 120 s, since a niced snippet on a loaded machine got ~1% of a CPU; `timeout` too
BACKSTOP_FACTOR, BACKSTOP_S = 30.0, 120.0


class SandboxUnavailable(RuntimeError):
    """No isolation on this machine: execution is disabled (see `sandbox.sandbox_status()`)."""


@dataclass(frozen=True)
class ExecResult:
    outcome: str  # one of sandbox.OUTCOMES
    detail: str = ""  # exception text, exit status, or why it was classified so
    seconds: float = 0.0  # wall-clock time in the sandbox (0 when decided without running)


@functools.lru_cache(maxsize=None)
def _bwrap_has(option: str) -> bool:
    bwrap = shutil.which("bwrap") or "bwrap"
    return option in subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout


def bwrap_command(python: str, info_fd: int, seccomp_fd: int,
                  block_fd: int | None = None) -> list[str]:
    """The bubblewrap command line (see sandbox.py's docstring for why each part is there)."""
    cmd = [shutil.which("bwrap") or "bwrap", *sandbox_view.view_args(python), "--proc", "/proc",
           "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
           "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--dir", "/tmp/work", "--remount-ro", "/",
           "--chdir", "/tmp/work", "--setenv", "HOME", "/tmp/work",
           "--uid", str(NOBODY), "--gid", str(NOBODY),
           "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
           "--as-pid-1", "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd)]
    # bwrap >= 0.8; the seccomp filter also refuses nested user namespaces
    if _bwrap_has("--disable-userns"):
        cmd.append("--disable-userns")
    # the cgroup layer: hold the supervisor until it has been moved into its cgroup
    if block_fd is not None:
        cmd += ["--block-fd", str(block_fd)]
    return cmd + [python, "-I", "-c", RUNNER]


def _drop_privileges(slot: int) -> dict:
    """Popen kwargs: a root parent runs the child as its slot's own uid (root ignores RLIMIT_NPROC,
    and a shared uid shares per-user quotas between concurrent snippets); others keep their uid."""
    if os.geteuid() == 0:
        return dict(user=SLOT_UID_BASE + slot, group=SLOT_UID_BASE + slot, extra_groups=[])
    return {}


def classify(returncode: int, report: str) -> tuple[str, str]:
    """(outcome, detail) from the supervisor's exit status (propagated by bwrap) and its one-line
    report."""
    kind = next((k for k, c in EXIT_CODES.items() if c == returncode), None)
    if kind is not None:
        return kind, report.strip()
    if returncode < 0 or returncode > 128:  # bwrap exits 128+N when the supervisor dies of signal N
        sig = -returncode if returncode < 0 else returncode - 128
        name = signal.Signals(sig).name if sig in signal.valid_signals() else sig
        return "killed", f"signal {name}"
    return "runtime_error", f"sandbox exited with status {returncode}: {report.strip()[:200]}"


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout) without its sleep-polling, which wakes up to 50 ms late: a pidfd is
    readable at exit."""
    if proc.returncode is not None:  # reaped: its pid may already belong to another process
        return proc.returncode
    try:
        fd = os.pidfd_open(proc.pid)  # our unreaped child: its pid cannot have been reused
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


# slot numbers not in use (a lingering sandbox keeps its own)
_FREE_SLOTS: queue.Queue = queue.Queue()
for _slot in range(SLOTS):
    _FREE_SLOTS.put(_slot)
# (bwrap, init pidfd, cgroup, slot) of sandboxes with a task alive after the grace
_LINGERING: list[tuple] = []
_LINGER_LOCK = threading.Lock()


def _reap(proc: subprocess.Popen, init_fd: int | None, cgroup, slot: int) -> None:
    """bwrap has exited: reap it (and the init, if bwrap died first and we are a subreaper), free
    the slot."""
    proc.wait()
    if init_fd is not None:
        # ours only if bwrap died first and we are a subreaper (a container's PID 1)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, init_fd, os.WEXITED | os.WNOHANG)
        os.close(init_fd)
    if cgroup is not None:
        cgroup.remove()
    _FREE_SLOTS.put(slot)


def _end(proc: subprocess.Popen | None, init_fd: int | None, cgroup, slot: int) -> bool:
    """Every exit path: kill the sandbox's init (the kernel then kills its whole pid namespace) and
    the cgroup, then wait until every task of the sandbox is gone. False when one outlived
    KILL_GRACE_S (a task in an uninterruptible sleep, e.g. an O_DIRECT read, dies only when its I/O
    ends): the sandbox lingers, holding its slot, and the next call waits for it
    (`_await_lingering`) instead of returning while it lives."""
    if cgroup is not None:
        cgroup.kill()
    if init_fd is not None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
    # no pidfd for the init (bwrap was still starting): --die-with-parent takes its child
    elif proc is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc is None:
        _FREE_SLOTS.put(slot)
        return True
    try:
        # bwrap exits only after reaping the init, and a pid namespace's init exits only after every
        # other task in it (kernel/pid_namespace.c, zap_pid_ns_processes): bwrap's exit means the
        # whole sandbox is gone.
        _wait(proc, KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with _LINGER_LOCK:
            _LINGERING.append((proc, init_fd, cgroup, slot))
        return False
    _reap(proc, init_fd, cgroup, slot)
    return True


def _await_lingering() -> None:
    """No call starts while a task of an earlier one lives; SandboxUnavailable after
    LINGER_LIMIT_S."""
    with _LINGER_LOCK:
        while _LINGERING:
            proc, init_fd, cgroup, slot = _LINGERING[0]
            try:
                _wait(proc, LINGER_LIMIT_S)
            except subprocess.TimeoutExpired:
                raise SandboxUnavailable(
                    f"a snippet task is still alive {LINGER_LIMIT_S:g} s after its kill "
                    f"(bwrap pid {proc.pid}): execution stops until it is gone") from None
            _LINGERING.pop(0)
            _reap(proc, init_fd, cgroup, slot)


@functools.lru_cache(maxsize=1)
def cached_cgroup_parent() -> tuple[str | None, str]:
    """sandbox_limits.cgroup_parent(), looked up once per process."""
    return sandbox_limits.cgroup_parent()


def _new_cgroup() -> sandbox_limits.RunCgroup | None:
    parent, _ = cached_cgroup_parent()
    if parent is None:
        return None
    try:
        return sandbox_limits.RunCgroup(parent, CGROUP_MEMORY_BYTES, NPROC + 4)
    except OSError:
        # the other layers still hold; sandbox_status reported the layer as on, a later run may work
        return None


def _launch(python: str, argv: list[str], files: tuple, cgroup, slot: int, ours) -> tuple:
    """Start bwrap -> (proc, the read end of its --info-fd, the write end of its --block-fd or
    None)."""
    info_r, info_w = os.pipe()
    ours.callback(os.close, info_r)
    theirs = [info_w, sandbox_limits.seccomp_fd()]
    block_w = None
    if cgroup is not None:
        block_r, block_w = os.pipe()
        ours.callback(os.close, block_w)
        theirs.append(block_r)
    try:
        proc = subprocess.Popen(bwrap_command(python, *theirs) + argv,
                                stdin=files[0], stdout=files[1], stderr=files[2], env={}, cwd="/",
                                start_new_session=True, pass_fds=theirs, **_drop_privileges(slot))
    finally:
        for fd in theirs:
            os.close(fd)
    return proc, info_r, block_w


def _attach(proc: subprocess.Popen, info_r: int, block_w: int | None, cgroup,
            deadline: float) -> int | None:
    """The pidfd of the sandbox's init (or None); with a cgroup, the init is moved into it before it
    may run."""
    # Past the snippet's deadline too: without the init's pidfd, a slow start would end in killing
    # bwrap alone, leaving its child to die by --die-with-parent unwatched (and unreaped under a
    # subreaper).
    init_deadline = max(deadline, time.monotonic() + KILL_GRACE_S)
    init_fd = sandbox_limits.init_pidfd(info_r, proc.pid, init_deadline)
    if block_w is not None:
        if init_fd is not None:
            with contextlib.suppress(OSError):  # optional layer: a failed move leaves the others on
                cgroup.add(sandbox_limits.pid_of(init_fd))
        os.write(block_w, b"x")
    return init_fd


def limits(timeout_s: float) -> tuple[float, float, float]:
    """(CPU seconds, blocked seconds, host wall-clock backstop) for one snippet: see sandbox.py's
    docstring."""
    return timeout_s, BLOCKED_FACTOR * timeout_s, BACKSTOP_FACTOR * timeout_s + BACKSTOP_S


def run_sandboxed(code: str, timeout_s: float, python: str) -> ExecResult:
    """Run `code` in a fresh sandbox and classify its end; the caller has checked `timeout_s`, the
    code's size and its syntax."""
    _await_lingering()
    cpu, blocked, backstop = limits(timeout_s)
    argv = [str(n) for n in (cpu, MEMORY_BYTES, NPROC, FSIZE_BYTES, NOFILE, blocked)]
    start = time.monotonic()
    deadline = start + backstop
    proc = init_fd = result = None
    # Plain files (not pipes) for stdin and the report: nothing in the sandbox can block the parent
    # on them.
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, \
            tempfile.TemporaryFile() as ferr, contextlib.ExitStack() as ours:
        fin.write(code.encode("utf-8", "surrogatepass"))
        fin.seek(0)
        slot, cgroup = _FREE_SLOTS.get(), _new_cgroup()
        try:
            proc, info_r, block_w = _launch(python, argv, (fin, fout, ferr), cgroup, slot, ours)
            init_fd = _attach(proc, info_r, block_w, cgroup, deadline)
            rc = _wait(proc, max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            result = ExecResult("timeout", f"wall clock > {backstop:g} s (the host's backstop)")
        finally:
            gone = _end(proc, init_fd, cgroup, slot)
        if not gone:
            result = ExecResult("unkillable",
                                f"a task was still alive {KILL_GRACE_S:g} s after the kill")
        if result is not None:
            return ExecResult(result.outcome, result.detail, time.monotonic() - start)
        fout.seek(0)
        report = fout.read(4096).decode("utf-8", "replace")  # only the supervisor writes here, once
        if rc not in EXIT_CODES.values():
            ferr.seek(0)
            # bwrap's own error, if it failed to start
            report += ferr.read(300).decode("utf-8", "replace")
    outcome, detail = classify(rc, report)
    return ExecResult(outcome, detail, time.monotonic() - start)

"""Sandboxed execution of model-written Python: bubblewrap namespaces, rlimits, seccomp, and a supervisor.

Model output is hostile input, and the execution outcome is a reward an RL policy will learn to exploit. Each
layer below names the attack it stops (the attacks are tests in tests/test_sandbox.py).
  * uid: CI runs as root and root ignores RLIMIT_NPROC, so a root parent drops the child to an unprivileged uid
    *before* exec'ing bubblewrap (Popen user=/group=, no preexec_fn, so it is safe from `execute_many`'s threads).
    `bwrap --uid` alone only relabels a uid inside a user namespace. Each concurrent sandbox holds a slot with its
    own host uid (SLOT_UID_BASE + slot): the kernel keeps some quotas per host uid (fds in flight over Unix
    sockets, pipe buffer pages), and with one shared uid a snippet holding them made the one beside it fail.
    Inside, every slot is `nobody` (65534). The sandbox runs the system interpreter (`/usr/bin/python3`) in
    isolated mode (`-I`): a venv under /root is neither reachable nor in the view.
  * namespaces (`--unshare-all --unshare-user`): user, pid, net (loopback only: no exfiltration, no downloads),
    ipc, uts, cgroup. No nested user namespace (its root may mount an uncapped tmpfs): seccomp, and
    `--disable-userns` where bwrap >= 0.8.
  * filesystem (`sandbox_view.py`): a read-only view of /usr but /usr/local, the interpreter's own path entries
    and a few /etc files, not of `/`: the checkout, the dataset (the test references gold scores against), HOME
    and the run folder are absent. Every writable mount is a capped tmpfs: /tmp (64 MiB, holds the working dir)
    and /dev/shm (16 MiB); / and /dev are read-only (a write flood there took host RAM).
  * time (decided by the supervisor, `sandbox_supervisor.py`): `timeout_s` is CPU time (the kernel's account
    of the child; RLIMIT_CPU is only a backstop), and a sleeping or blocked snippet gets BLOCKED_FACTOR x
    `timeout_s` of wall clock less its wait for a CPU. Neither depends on the machine's load, so the same seed
    gives the same exec outcomes, labels and rewards on a busy machine (a plain wall clock timed out more
    snippets under load). The host keeps a wall-clock backstop; all three end as `timeout`.
  * rlimits (set by the supervisor): CPU, AS (a 50 GB allocation is a MemoryError), NPROC (fork bomb), FSIZE,
    NOFILE (bounds the pipe and socket buffers a snippet can hold).
  * seccomp (`sandbox_limits.py`): EPERM for ptrace, process_vm_readv/writev and friends (no reaching into the
    supervisor), memfd_create and System V shm/msg (memory that neither RLIMIT_AS nor a tmpfs cap counts),
    io_uring (its fixed-file tables hold sockets past RLIMIT_NOFILE); sockets of the unix, inet and inet6 families
    only (AF_VSOCK reaches the hypervisor whatever the net namespace says), no TCP, no SO_SNDBUF/SO_RCVBUF (kernel
    buffer memory outside RLIMIT_AS), no fadvise(DONTNEED) or preadv2(RWF_NOWAIT) (a page-cache channel).
  * the supervisor (RUNNER) is the sandbox's pid 1 (`--as-pid-1`): it forks the snippet as its child and reports
    the child's fate from the parent side, by its own exit status. The snippet never holds the report descriptor,
    the supervisor is non-dumpable (no /proc/1/mem), and pid 1 ignores every signal sent from inside the
    namespace, so the snippet can neither write, pad, flood nor forge the report.
  * what no in-process classifier can stop: the snippet shares its process with the code that classifies it, so
    one that ends that process with the success status (`os._exit(100)`, or `sys.exit(0)` before the line that
    would fail) is `ok`: it ran without an error up to where it chose to stop. The reward bounds what that buys:
    exec weighs 0.15 and is capped at the reference's own outcome (feedback.cap_exec, in gold and in PPO).
  * the host kills the sandbox's init by its host pid (`--info-fd`, held as a pidfd) on every exit path: the
    kernel then kills the whole pid namespace, whatever the snippet did to its own sessions or death signals.
    The call then waits, up to KILL_GRACE_S, until bwrap exits, which is only after every task of the namespace
    is gone: a task in an uninterruptible sleep (an O_DIRECT read) dies only when its I/O ends, and returning
    earlier left it running and, under a subreaper parent, its init a zombie. Past the grace the outcome is
    `unkillable` and the next call waits for it. `--die-with-parent` covers the host process dying. bwrap is
    always reaped (no zombies under a PID-1 trainer).
  * optional, where a writable cgroup v2 delegates memory+pids: one cgroup per run (memory.max counts tmpfs,
    socket buffers and the sum over forks; pids.max; cgroup.kill). `sandbox_status()` says which layers are on.
If bubblewrap (or the interpreter, or user namespaces) is missing, `sandbox_status()` says why and
`execute_snippet` raises: model output is never run unsandboxed.

Outcomes: ok | syntax_error | name_error | runtime_error | timeout | killed | too_large | unkillable.
`name_error` covers NameError and ModuleNotFoundError: CoNaLa snippets are fragments over free variables (`df`,
`mylist`) and third-party modules the sandbox lacks, so "ran until it needed an undefined input" is its own class.
`too_large` is code over MAX_CODE_CHARS, decided without parsing it. `unkillable` is a snippet with a task
still alive KILL_GRACE_S after its kill (exec signal 0, as for a timeout). What the supervisor cannot see is
intent: the snippet's own process ends however the snippet chooses, so code that stops itself early the way the
runner would (its exit status for `ok`, or `sys.exit(0)`) counts as ok, as a snippet that catches its own error
always has.
"""
from __future__ import annotations

import ast
import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import queue
import threading

import sandbox_limits
import sandbox_view
from sandbox_supervisor import EXIT_CODES, RUNNER

OUTCOMES = ("ok", "syntax_error", "name_error", "runtime_error", "timeout", "killed", "too_large", "unkillable")
NOBODY = 65534  # the uid/gid a snippet sees inside its user namespace (the one /etc/passwd names)
SLOT_UID_BASE = 65500  # a root parent runs slot i as host uid/gid SLOT_UID_BASE + i: Debian policy 9.2.2 reserves
# 65000-65533, so no account owns them, and per-user kernel quotas (fds in flight over Unix sockets, pipe buffers)
# are one snippet's own instead of shared with the snippet running beside it
SLOTS = 32  # sandboxes at once; more execute_many workers wait for a free slot
KILL_GRACE_S = 5.0  # after the kill, how long a task may take to die (uninterruptible I/O) before `unkillable`
LINGER_LIMIT_S = 600.0  # a later call waits this long for such a task to die, then refuses to run
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
TMPFS_BYTES = 64 << 20  # private /tmp (working dir included): a write flood fills 64 MiB of RAM, not the disk
SHM_BYTES = 16 << 20  # private /dev/shm: POSIX semaphores and shm_open need it writable; 300 MB went here
MEMORY_BYTES = 512 << 20  # RLIMIT_AS: the interpreter needs ~30 MiB; a 50 GB allocation fails with MemoryError
NPROC = 32  # RLIMIT_NPROC: counted per uid inside the sandbox's user namespace, so it bounds a fork bomb
FSIZE_BYTES = 8 << 20  # RLIMIT_FSIZE: largest file the child may write
NOFILE = 64  # RLIMIT_NOFILE: each open pipe or socket can pin ~200 KB of kernel buffers outside RLIMIT_AS
CGROUP_MEMORY_BYTES = 768 << 20  # memory.max of the optional per-run cgroup: every process and tmpfs page
MAX_CODE_CHARS = 32_000  # the longest CoNaLa snippet is 232 chars; ast.parse of 32K chars takes <0.1 s
MAX_TIMEOUT_S = 600.0  # a per-snippet limit beyond 10 minutes is a config mistake, not a budget
BLOCKED_FACTOR = 4.0  # a snippet may block for this many timeout_s (idle-equivalent): generous, since one waiting
# on its own subprocess also waits out that subprocess's wait for a CPU
BACKSTOP_FACTOR, BACKSTOP_S = 30.0, 120.0  # the host's wall clock, for a supervisor that cannot act (a starved
# machine): 30 x timeout_s + 120 s, since a niced snippet on a loaded machine got ~1% of a CPU; `timeout` too
SNIPPET_FILENAME = "<snippet>"  # filename for parsing model output; its compile warnings ("invalid escape") are noise
warnings.filterwarnings("ignore", module=SNIPPET_FILENAME)  # only warnings attributed to that filename


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


@functools.lru_cache(maxsize=None)
def _bwrap_has(option: str) -> bool:
    return option in subprocess.run([shutil.which("bwrap") or "bwrap", "--help"], capture_output=True, text=True).stdout


def bwrap_command(python: str, info_fd: int, seccomp_fd: int, block_fd: int | None = None) -> list[str]:
    """The bubblewrap command line (see the module docstring for why each part is there)."""
    cmd = [shutil.which("bwrap") or "bwrap", *sandbox_view.view_args(python), "--proc", "/proc",
           "--dev", "/dev", "--size", str(SHM_BYTES), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
           "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp", "--dir", "/tmp/work", "--remount-ro", "/",
           "--chdir", "/tmp/work", "--setenv", "HOME", "/tmp/work", "--uid", str(NOBODY), "--gid", str(NOBODY),
           "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--as-pid-1", "--info-fd", str(info_fd), "--seccomp", str(seccomp_fd)]
    if _bwrap_has("--disable-userns"):  # bwrap >= 0.8; the seccomp filter also refuses nested user namespaces
        cmd.append("--disable-userns")
    if block_fd is not None:  # the cgroup layer: hold the supervisor until it has been moved into its cgroup
        cmd += ["--block-fd", str(block_fd)]
    return cmd + [python, "-I", "-c", RUNNER]


def _drop_privileges(slot: int) -> dict:
    """Popen kwargs: a root parent runs the child as its slot's own uid (root ignores RLIMIT_NPROC, and a shared
    uid shares per-user quotas between concurrent snippets); others keep their uid."""
    if os.geteuid() == 0:
        return dict(user=SLOT_UID_BASE + slot, group=SLOT_UID_BASE + slot, extra_groups=[])
    return {}


def check_timeout(timeout_s) -> float:
    """The time limit per snippet (see `limits`), or a ValueError naming the valid range (NaN, inf, <= 0 included)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s!r}")
    return float(timeout_s)


def classify(returncode: int, report: str) -> tuple[str, str]:
    """(outcome, detail) from the supervisor's exit status (propagated by bwrap) and its one-line report."""
    kind = next((k for k, c in EXIT_CODES.items() if c == returncode), None)
    if kind is not None:
        return kind, report.strip()
    if returncode < 0 or returncode > 128:  # bwrap exits 128+N when the supervisor dies of signal N
        sig = -returncode if returncode < 0 else returncode - 128
        return "killed", f"signal {signal.Signals(sig).name if sig in signal.valid_signals() else sig}"
    return "runtime_error", f"sandbox exited with status {returncode}: {report.strip()[:200]}"


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout) without its sleep-polling, which wakes up to 50 ms late: a pidfd is readable at exit."""
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


_FREE_SLOTS: queue.Queue = queue.Queue()  # slot numbers not in use (a lingering sandbox keeps its own)
for _slot in range(SLOTS):
    _FREE_SLOTS.put(_slot)
_LINGERING: list[tuple] = []  # (bwrap, init pidfd, cgroup, slot) of sandboxes with a task alive after the grace
_LINGER_LOCK = threading.Lock()


def _reap(proc: subprocess.Popen, init_fd: int | None, cgroup, slot: int) -> None:
    """bwrap has exited: reap it (and the init, if bwrap died first and we are a subreaper), free the slot."""
    proc.wait()
    if init_fd is not None:
        with contextlib.suppress(ChildProcessError, OSError):  # ours only if bwrap died first and we are a
            os.waitid(os.P_PIDFD, init_fd, os.WEXITED | os.WNOHANG)  # subreaper (a container's PID 1)
        os.close(init_fd)
    if cgroup is not None:
        cgroup.remove()
    _FREE_SLOTS.put(slot)


def _end(proc: subprocess.Popen | None, init_fd: int | None, cgroup, slot: int) -> bool:
    """Every exit path: kill the sandbox's init (the kernel then kills its whole pid namespace) and the cgroup,
    then wait until every task of the sandbox is gone. False when one outlived KILL_GRACE_S (a task in an
    uninterruptible sleep, e.g. an O_DIRECT read, dies only when its I/O ends): the sandbox lingers, holding its
    slot, and the next call waits for it (`_await_lingering`) instead of returning while it lives."""
    if cgroup is not None:
        cgroup.kill()
    if init_fd is not None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
    elif proc is not None:  # no pidfd for the init (bwrap was still starting): --die-with-parent takes its child
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc is None:
        _FREE_SLOTS.put(slot)
        return True
    try:
        # bwrap exits only after reaping the init, and a pid namespace's init exits only after every other task in
        # it (kernel/pid_namespace.c, zap_pid_ns_processes): bwrap's exit means the whole sandbox is gone.
        _wait(proc, KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        with _LINGER_LOCK:
            _LINGERING.append((proc, init_fd, cgroup, slot))
        return False
    _reap(proc, init_fd, cgroup, slot)
    return True


def _await_lingering() -> None:
    """No call starts while a task of an earlier one lives; SandboxUnavailable after LINGER_LIMIT_S."""
    with _LINGER_LOCK:
        while _LINGERING:
            proc, init_fd, cgroup, slot = _LINGERING[0]
            try:
                _wait(proc, LINGER_LIMIT_S)
            except subprocess.TimeoutExpired:
                raise SandboxUnavailable(f"a snippet task is still alive {LINGER_LIMIT_S:g} s after its kill "
                                         f"(bwrap pid {proc.pid}): execution stops until it is gone") from None
            _LINGERING.pop(0)
            _reap(proc, init_fd, cgroup, slot)


@functools.lru_cache(maxsize=1)
def _cgroup_parent() -> tuple[str | None, str]:
    return sandbox_limits.cgroup_parent()


def _new_cgroup() -> sandbox_limits.RunCgroup | None:
    parent, _ = _cgroup_parent()
    if parent is None:
        return None
    try:
        return sandbox_limits.RunCgroup(parent, CGROUP_MEMORY_BYTES, NPROC + 4)
    except OSError:
        return None  # the other layers still hold; sandbox_status reported the layer as on, a later run may work


def _launch(python: str, argv: list[str], files: tuple, cgroup, slot: int, ours) -> tuple:
    """Start bwrap -> (proc, the read end of its --info-fd, the write end of its --block-fd or None)."""
    info_r, info_w = os.pipe()
    ours.callback(os.close, info_r)
    theirs = [info_w, sandbox_limits.seccomp_fd()]
    block_w = None
    if cgroup is not None:
        block_r, block_w = os.pipe()
        ours.callback(os.close, block_w)
        theirs.append(block_r)
    try:
        proc = subprocess.Popen(bwrap_command(python, *theirs) + argv, stdin=files[0], stdout=files[1],
                                stderr=files[2], env={}, cwd="/", start_new_session=True, pass_fds=theirs,
                                **_drop_privileges(slot))
    finally:
        for fd in theirs:
            os.close(fd)
    return proc, info_r, block_w


def _attach(proc: subprocess.Popen, info_r: int, block_w: int | None, cgroup, deadline: float) -> int | None:
    """The pidfd of the sandbox's init (or None); with a cgroup, the init is moved into it before it may run."""
    # Past the snippet's deadline too: without the init's pidfd, a slow start would end in killing bwrap alone,
    # leaving its child to die by --die-with-parent unwatched (and unreaped under a subreaper).
    init_fd = sandbox_limits.init_pidfd(info_r, proc.pid, max(deadline, time.monotonic() + KILL_GRACE_S))
    if block_w is not None:
        if init_fd is not None:
            with contextlib.suppress(OSError):  # optional layer: a failed move leaves the others on
                cgroup.add(sandbox_limits.pid_of(init_fd))
        os.write(block_w, b"x")
    return init_fd


def limits(timeout_s: float) -> tuple[float, float, float]:
    """(CPU seconds, blocked seconds, host wall-clock backstop) for one snippet: see the module docstring."""
    return timeout_s, BLOCKED_FACTOR * timeout_s, BACKSTOP_FACTOR * timeout_s + BACKSTOP_S


def _run_sandboxed(code: str, timeout_s: float, python: str) -> ExecResult:
    _await_lingering()
    cpu, blocked, backstop = limits(timeout_s)
    argv = [str(n) for n in (cpu, MEMORY_BYTES, NPROC, FSIZE_BYTES, NOFILE, blocked)]
    start = time.monotonic()
    deadline = start + backstop
    proc = init_fd = result = None
    # Plain files (not pipes) for stdin and the report: nothing in the sandbox can block the parent on them.
    with tempfile.TemporaryFile() as fin, tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr, \
            contextlib.ExitStack() as ours:
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
            result = ExecResult("unkillable", f"a task was still alive {KILL_GRACE_S:g} s after the kill")
        if result is not None:
            return ExecResult(result.outcome, result.detail, time.monotonic() - start)
        fout.seek(0)
        report = fout.read(4096).decode("utf-8", "replace")  # only the supervisor writes here, once
        if rc not in EXIT_CODES.values():
            ferr.seek(0)
            report += ferr.read(300).decode("utf-8", "replace")  # bwrap's own error, if it failed to start
    outcome, detail = classify(rc, report)
    return ExecResult(outcome, detail, time.monotonic() - start)


def layers() -> dict[str, str]:
    """Each isolation layer -> "on ..." or "off: why"; the optional ones may be off (diagnose.py prints this)."""
    parent, why = _cgroup_parent()
    return {"namespaces": "on: user/pid/net/ipc/uts/cgroup/mount, no nested user namespaces",
            "filesystem": f"on: read-only /usr, the interpreter's paths and {len(sandbox_view.ETC_ENTRIES)} /etc "
                          f"entries (not /), {TMPFS_BYTES >> 20} MiB /tmp, {SHM_BYTES >> 20} MiB /dev/shm",
            "uid per slot": (f"on: host uids {SLOT_UID_BASE}-{SLOT_UID_BASE + SLOTS - 1}" if os.geteuid() == 0
                             else f"off: not root, every sandbox runs as uid {os.geteuid()}"),
            "rlimits": f"on: cpu, as={MEMORY_BYTES >> 20}MiB, nproc={NPROC}, fsize={FSIZE_BYTES >> 20}MiB, "
                       f"nofile={NOFILE}",
            "seccomp": f"on: EPERM for {', '.join(sandbox_limits.DENIED)}, clone(CLONE_NEWUSER), INET stream "
                       f"sockets, SO_SNDBUF/SO_RCVBUF, fadvise(DONTNEED); ENOSYS for clone3; only unix/inet/inet6 "
                       f"sockets; no preadv2(RWF_NOWAIT)",
            "supervisor": "on: pid 1, non-dumpable, reports its child's exit status",
            "load-free time": (f"on: CPU time; {BLOCKED_FACTOR:g}x that blocked, less the wait for a CPU" if
                               os.path.exists("/proc/self/schedstat") else "off: no schedstat, blocked is wall clock"),
            "init kill": (f"on: by pidfd, then up to {KILL_GRACE_S:g} s until every task is gone" if
                          hasattr(os, "pidfd_open") else "off: no os.pidfd_open (Linux >= 5.3)"),
            "cgroup": f"on: {parent}, memory.max={CGROUP_MEMORY_BYTES >> 20}MiB" if parent else f"off: {why}",
            "memory bound": (f"on: the cgroup's memory.max, {CGROUP_MEMORY_BYTES >> 20} MiB for everything" if parent
                             else f"on: per process only, RLIMIT_AS {MEMORY_BYTES >> 20} MiB x {NPROC} processes, "
                                  f"plus kernel socket buffers (<= ~0.8 GiB measured, see the README) and "
                                  f"{(TMPFS_BYTES + SHM_BYTES) >> 20} MiB of tmpfs")}


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
    try:
        sandbox_limits.seccomp_program()
    except ValueError as e:
        return False, f"execution disabled: {e}"
    # The probe asserts the isolation facts from inside: only loopback, read-only root and /dev, private /tmp,
    # seccomp on. (The uid drop is visible only from outside; tests/test_sandbox.py checks it.)
    probe = ("import os\nnets = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
             "assert nets == ['lo'], 'network: %s' % nets\n"
             "for p in ('/.sandbox-probe', '/dev/.sandbox-probe'):\n    try:\n        open(p, 'w')\n"
             "        raise AssertionError(p + ' is writable')\n    except OSError:\n        pass\n"
             "assert os.listdir('/tmp') == ['work'], 'shared /tmp'\n"
             "try:\n    os.memfd_create('probe')\n    raise AssertionError('no seccomp filter')\n"
             "except PermissionError:\n    pass\n")
    try:
        res = _run_sandboxed(probe, timeout_s=10.0, python=python)
    except OSError as e:
        return False, f"execution disabled: cannot start bubblewrap ({e})"
    if res.outcome != "ok":
        return False, f"execution disabled: sandbox probe failed ({res.outcome}: {res.detail})"
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    uid = f"one uid per slot from {SLOT_UID_BASE}" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    off = [k for k, v in layers().items() if v.startswith("off")]
    return True, (f"{version}, {python} -I as {uid}; namespaces, read-only view of /usr with capped tmpfs, "
                  f"rlimits, seccomp, pid-1 supervisor, init kill" + (f"; off: {', '.join(off)}" if off else ""))


def execute_snippet(code: str, timeout_s: float = 2.0) -> ExecResult:
    """Run one snippet in the sandbox -> ExecResult(outcome, detail, seconds). Raises SandboxUnavailable.

    Code over MAX_CODE_CHARS is `too_large` and unparseable code `syntax_error`, both without starting a sandbox
    (`ast.parse` builds a tree, it runs nothing, and the size cap bounds its time and memory)."""
    timeout_s = check_timeout(timeout_s)
    ok, detail = sandbox_status()
    if not ok:
        raise SandboxUnavailable(detail)
    if len(code) > MAX_CODE_CHARS:
        return ExecResult("too_large", f"{len(code)} characters > MAX_CODE_CHARS={MAX_CODE_CHARS}")
    try:
        ast.parse(code, filename=SNIPPET_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return ExecResult("syntax_error", f"{type(e).__name__}: {e}")
    return _run_sandboxed(code, timeout_s, find_python())


def execute_many(codes: list[str], timeout_s: float = 2.0, workers: int = 2) -> list[ExecResult]:
    """execute_snippet over a list, identical code run once, `workers` sandboxes at a time; results in order."""
    check_timeout(timeout_s)
    unique = list(dict.fromkeys(codes))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(zip(unique, pool.map(lambda c: execute_snippet(c, timeout_s), unique)))
    return [results[c] for c in codes]

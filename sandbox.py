"""Sandboxed execution of model-written Python: bubblewrap namespaces, rlimits, seccomp, supervisor.

Model output is hostile input, and the execution outcome is a reward an RL policy will learn to
exploit. Each layer below names the attack it stops (the attacks are tests in
tests/test_sandbox.py). The modules named below are in plumbing/.
  * uid: CI runs as root and root ignores RLIMIT_NPROC, so a root parent drops the child to an
    unprivileged uid *before* exec'ing bubblewrap (Popen user=/group=, no preexec_fn, so it is safe
    from `execute_many`'s threads). `bwrap --uid` alone only relabels a uid inside a user namespace.
    Each concurrent sandbox holds a slot with its own host uid (SLOT_UID_BASE + slot): the kernel
    keeps some quotas per host uid (fds in flight over Unix sockets, pipe buffer pages), and with
    one shared uid a snippet holding them made the one beside it fail. Inside, every slot is
    `nobody` (65534). The sandbox runs the system interpreter (`/usr/bin/python3`) in isolated mode
    (`-I`): a venv under /root is neither reachable nor in the view.
  * namespaces (`--unshare-all --unshare-user`): user, pid, net (loopback only: no exfiltration, no
    downloads), ipc, uts, cgroup. No nested user namespace (its root may mount an uncapped tmpfs):
    seccomp, and `--disable-userns` where bwrap >= 0.8.
  * filesystem (`sandbox_view.py`): a read-only view of /usr but /usr/local, the interpreter's own
    path entries and a few /etc files, not of `/`: the checkout, the dataset (the test references
    gold scores against), HOME and the run folder are absent. Every writable mount is a capped
    tmpfs: /tmp (64 MiB, holds the working dir) and /dev/shm (16 MiB); / and /dev are read-only (a
    write flood there took host RAM).
  * time (decided by the supervisor, `sandbox_supervisor.py`): `timeout_s` is CPU time (the kernel's
    account of the child; RLIMIT_CPU is only a backstop), and a sleeping or blocked snippet gets
    BLOCKED_FACTOR x `timeout_s` of wall clock less its wait for a CPU. Neither depends on the
    machine's load, so the same seed gives the same exec outcomes, labels and rewards on a busy
    machine (a plain wall clock timed out more snippets under load). The host keeps a wall-clock
    backstop; all three end as `timeout`.
  * rlimits (set by the supervisor): CPU, AS (a 50 GB allocation is a MemoryError), NPROC (fork
    bomb), FSIZE, NOFILE (bounds the pipe and socket buffers a snippet can hold).
  * seccomp (`sandbox_limits.py`): EPERM for ptrace, process_vm_readv/writev and friends (no
    reaching into the supervisor), memfd_create and System V shm/msg (memory that neither RLIMIT_AS
    nor a tmpfs cap counts), io_uring (its fixed-file tables hold sockets past RLIMIT_NOFILE);
    sockets of the unix, inet and inet6 families only (AF_VSOCK reaches the hypervisor whatever the
    net namespace says), no TCP, no SO_SNDBUF/SO_RCVBUF (kernel buffer memory outside RLIMIT_AS), no
    fadvise(DONTNEED) or preadv2(RWF_NOWAIT) (a page-cache channel).
  * the supervisor (RUNNER) is the sandbox's pid 1 (`--as-pid-1`): it forks the snippet as its child
    and reports the child's fate from the parent side, by its own exit status. The snippet never
    holds the report descriptor, the supervisor is non-dumpable (no /proc/1/mem), and pid 1 ignores
    every signal sent from inside the namespace, so the snippet can neither write, pad, flood nor
    forge the report.
  * what no in-process classifier can stop: the snippet shares its process with the code that
    classifies it, so one that ends that process with the success status (`os._exit(100)`, or
    `sys.exit(0)` before the line that would fail) is `ok`: it ran without an error up to where it
    chose to stop. The reward bounds what that buys: exec weighs 0.15 and is capped at the
    reference's own outcome (feedback.cap_exec, in gold and in PPO).
  * the host (`sandbox_host.py`) kills the sandbox's init by its host pid (`--info-fd`, held as a
    pidfd) on every exit path: the kernel then kills the whole pid namespace, whatever the snippet
    did to its own sessions or death signals. The call then waits, up to KILL_GRACE_S, until bwrap
    exits, which is only after every task of the namespace is gone: a task in an uninterruptible
    sleep (an O_DIRECT read) dies only when its I/O ends, and returning earlier left it running and,
    under a subreaper parent, its init a zombie. Past the grace the outcome is `unkillable` and the
    next call waits for it. `--die-with-parent` covers the host process dying. bwrap is always
    reaped (no zombies under a PID-1 trainer).
  * optional, where a writable cgroup v2 delegates memory+pids: one cgroup per run (memory.max
    counts tmpfs, socket buffers and the sum over forks; pids.max; cgroup.kill). `sandbox_status()`
    says which layers are on.
If bubblewrap (or the interpreter, or user namespaces) is missing, `sandbox_status()` says why and
`execute_snippet` raises: model output is never run unsandboxed.

Outcomes: ok | syntax_error | name_error | runtime_error | timeout | killed | too_large |
unkillable. `name_error` covers NameError and ModuleNotFoundError: CoNaLa snippets are fragments
over free variables (`df`, `mylist`) and third-party modules the sandbox lacks, so "ran until it
needed an undefined input" is its own class. `too_large` is code over MAX_CODE_CHARS, decided
without parsing it. `unkillable` is a snippet with a task still alive KILL_GRACE_S after its kill
(exec signal 0, as for a timeout). What the supervisor cannot see is intent: the snippet's own
process ends however the snippet chooses, so code that stops itself early the way the runner would
(its exit status for `ok`, or `sys.exit(0)`) counts as ok, as a snippet that catches its own error
always has.
"""
from __future__ import annotations

import ast
import functools
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

from plumbing import sandbox_host
from plumbing import sandbox_limits
from plumbing import sandbox_view

OUTCOMES = ("ok", "syntax_error", "name_error", "runtime_error", "timeout", "killed", "too_large",
            "unkillable")
PYTHON_CANDIDATES = ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3")
# the longest CoNaLa snippet is 232 chars; ast.parse of 32K chars takes <0.1 s
MAX_CODE_CHARS = 32_000
MAX_TIMEOUT_S = 600.0  # a per-snippet limit beyond 10 minutes is a config mistake, not a budget
# filename for parsing model output; its compile warnings ("invalid escape") are noise
SNIPPET_FILENAME = "<snippet>"
# only warnings attributed to that filename
warnings.filterwarnings("ignore", module=SNIPPET_FILENAME)


def find_python() -> str | None:
    """The system interpreter: reachable by `nobody`, unlike a venv under /root."""
    return next((p for p in PYTHON_CANDIDATES if os.access(p, os.X_OK)), None)


def check_timeout(timeout_s) -> float:
    """The time limit per snippet (see `sandbox_host.limits`), or a ValueError naming the valid
    range (NaN, inf, <= 0 included)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
            or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(f"timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], "
                         f"got {timeout_s!r}")
    return float(timeout_s)


def layers() -> dict[str, str]:
    """Each isolation layer -> "on ..." or "off: why"; the optional ones may be off (diagnose.py
    prints this)."""
    host = sandbox_host
    parent, why = host.cached_cgroup_parent()
    etc = len(sandbox_view.ETC_ENTRIES)
    last_uid = host.SLOT_UID_BASE + host.SLOTS - 1
    return {"namespaces": "on: user/pid/net/ipc/uts/cgroup/mount, no nested user namespaces",
            "filesystem": f"on: read-only /usr, the interpreter's paths and {etc} /etc entries "
                          f"(not /), {host.TMPFS_BYTES >> 20} MiB /tmp, "
                          f"{host.SHM_BYTES >> 20} MiB /dev/shm",
            "uid per slot": (f"on: host uids {host.SLOT_UID_BASE}-{last_uid}" if os.geteuid() == 0
                             else f"off: not root, every sandbox runs as uid {os.geteuid()}"),
            "rlimits": f"on: cpu, as={host.MEMORY_BYTES >> 20}MiB, nproc={host.NPROC}, "
                       f"fsize={host.FSIZE_BYTES >> 20}MiB, nofile={host.NOFILE}",
            "seccomp": f"on: EPERM for {', '.join(sandbox_limits.DENIED)}, clone(CLONE_NEWUSER), "
                       f"INET stream sockets, SO_SNDBUF/SO_RCVBUF, fadvise(DONTNEED); "
                       f"ENOSYS for clone3; only unix/inet/inet6 sockets; no preadv2(RWF_NOWAIT)",
            "supervisor": "on: pid 1, non-dumpable, reports its child's exit status",
            "load-free time": (f"on: CPU time; {host.BLOCKED_FACTOR:g}x that blocked, "
                               f"less the wait for a CPU"
                               if os.path.exists("/proc/self/schedstat")
                               else "off: no schedstat, blocked is wall clock"),
            "init kill": (f"on: by pidfd, then up to {host.KILL_GRACE_S:g} s "
                          f"until every task is gone"
                          if hasattr(os, "pidfd_open")
                          else "off: no os.pidfd_open (Linux >= 5.3)"),
            "cgroup": (f"on: {parent}, memory.max={host.CGROUP_MEMORY_BYTES >> 20}MiB" if parent
                       else f"off: {why}"),
            "memory bound": (f"on: the cgroup's memory.max, {host.CGROUP_MEMORY_BYTES >> 20} MiB "
                             f"for everything" if parent
                             else f"on: per process only, RLIMIT_AS {host.MEMORY_BYTES >> 20} MiB "
                                  f"x {host.NPROC} processes, plus kernel socket buffers "
                                  f"(<= ~0.8 GiB measured, see docs/RESULTS.md) and "
                                  f"{(host.TMPFS_BYTES + host.SHM_BYTES) >> 20} MiB of tmpfs")}


@functools.lru_cache(maxsize=1)
def sandbox_status() -> tuple[bool, str]:
    """(ok, detail) -- whether snippets can be executed in isolation here, checked by running a
    probe."""
    if not sys.platform.startswith("linux"):
        return False, ("execution disabled: the sandbox needs Linux namespaces "
                       f"(this is {sys.platform})")
    if shutil.which("bwrap") is None:
        return False, ("execution disabled: bubblewrap is not installed "
                       "(apt-get install bubblewrap)")
    python = find_python()
    if python is None:
        return False, f"execution disabled: no system python3 at {', '.join(PYTHON_CANDIDATES)}"
    try:
        sandbox_limits.seccomp_program()
    except ValueError as e:
        return False, f"execution disabled: {e}"
    # The probe asserts the isolation facts from inside: only loopback, read-only root and /dev,
    # private /tmp, seccomp on. (The uid drop is visible only from outside; tests/test_sandbox.py
    # checks it.)
    probe = ("import os\n"
             "nets = [l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]]\n"
             "assert nets == ['lo'], 'network: %s' % nets\n"
             "for p in ('/.sandbox-probe', '/dev/.sandbox-probe'):\n"
             "    try:\n        open(p, 'w')\n"
             "        raise AssertionError(p + ' is writable')\n    except OSError:\n        pass\n"
             "assert os.listdir('/tmp') == ['work'], 'shared /tmp'\n"
             "try:\n    os.memfd_create('probe')\n    raise AssertionError('no seccomp filter')\n"
             "except PermissionError:\n    pass\n")
    try:
        res = sandbox_host.run_sandboxed(probe, timeout_s=10.0, python=python)
    except OSError as e:
        return False, f"execution disabled: cannot start bubblewrap ({e})"
    if res.outcome != "ok":
        return False, f"execution disabled: sandbox probe failed ({res.outcome}: {res.detail})"
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    uid = (f"one uid per slot from {sandbox_host.SLOT_UID_BASE}" if os.geteuid() == 0
           else f"uid {os.geteuid()}")
    off = [k for k, v in layers().items() if v.startswith("off")]
    return True, (f"{version}, {python} -I as {uid}; namespaces, read-only view of /usr with "
                  f"capped tmpfs, rlimits, seccomp, pid-1 supervisor, init kill"
                  + (f"; off: {', '.join(off)}" if off else ""))


def execute_snippet(code: str, timeout_s: float = 2.0) -> sandbox_host.ExecResult:
    """Run one snippet in the sandbox -> ExecResult(outcome, detail, seconds). Raises
    SandboxUnavailable.

    Code over MAX_CODE_CHARS is `too_large` and unparseable code `syntax_error`, both without
    starting a sandbox (`ast.parse` builds a tree, it runs nothing, and the size cap bounds its time
    and memory)."""
    timeout_s = check_timeout(timeout_s)
    ok, detail = sandbox_status()
    if not ok:
        raise sandbox_host.SandboxUnavailable(detail)
    if len(code) > MAX_CODE_CHARS:
        return sandbox_host.ExecResult("too_large",
                                       f"{len(code)} characters > MAX_CODE_CHARS={MAX_CODE_CHARS}")
    try:
        ast.parse(code, filename=SNIPPET_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return sandbox_host.ExecResult("syntax_error", f"{type(e).__name__}: {e}")
    return sandbox_host.run_sandboxed(code, timeout_s, find_python())


def execute_many(codes: list[str], timeout_s: float = 2.0,
                 workers: int = 2) -> list[sandbox_host.ExecResult]:
    """execute_snippet over a list, identical code run once, `workers` sandboxes at a time; results
    in order."""
    check_timeout(timeout_s)
    unique = list(dict.fromkeys(codes))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(zip(unique, pool.map(lambda c: execute_snippet(c, timeout_s), unique)))
    return [results[c] for c in codes]

"""The supervisor: the Python program that runs inside the sandbox as its pid 1.

It is source text, not code this process runs: `sandbox_host.bwrap_command` passes RUNNER to the
sandbox's interpreter with `-c`. What it guards against is listed in sandbox.py's docstring and
tested in tests/test_sandbox.py.
"""
# The supervisor's exit status per outcome (the snippet's child uses the first four for its own
# class). Above any status Python or a shell picks by itself, below bwrap's 128+signal.
EXIT_CODES = {"ok": 100, "syntax_error": 101, "name_error": 102, "runtime_error": 103,
              "killed": 104, "timeout": 105}

# Timeouts are decided here, from the snippet's own accounting, not by the host's wall clock: under
# load a host clock timed out snippets that an idle machine ran to the end, which changed exec
# signals, labels and rewards between two runs of the same seed. A snippet times out when
#   * its CPU time (user + system, its reaped children included: /proc/<pid>/stat while it runs, the
#     kernel's rusage at its end) reaches the CPU limit; RLIMIT_CPU, a second or two above it, is
#     the backstop; or
#   * it stays blocked (sleeping, waiting on a pipe or a socket) past the blocked limit in
#     *idle-equivalent* time: the wall clock since its fork less the time its threads waited
#     runnable for a CPU, which the kernel counts per task (run_delay,
#     /proc/<pid>/task/<tid>/schedstat). The supervisor's own wake-up, late by its own wait for a
#     CPU, is moved back by that wait. So `time.sleep(100)` is `timeout` and `time.sleep(1)` is not,
#     at any load. Both limits end as `timeout`, so which one fires first on a busy loop changes
#     nothing.
# The supervisor: pid 1 of the sandbox. argv = cpu, as, nproc, fsize, nofile, blocked; stdin = the
# code. It forks the snippet as its child and learns the child's class from the child's exit status;
# the child's one-line detail comes on a pipe read only after the child is dead. The report (its
# stdout, a host file) is written only by the supervisor, after every other process in the namespace
# has been killed, as "<detail>\n"; the outcome is the supervisor's exit status. PR_SET_DUMPABLE=0
# closes /proc/1/mem and /proc/1/fd to the child; seccomp closes ptrace; pid 1 ignores SIGINT here
# and, as a namespace init, every signal it has no handler for.
RUNNER = r'''
import os, resource, signal, sys, time
CODES = @EXIT_CODES@

def child(src, w):
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])  # blocked only in the supervisor
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # output floods cost nothing, and the report is not among its fds
    os.close(null)
    os.set_blocking(w, False)  # a snippet flooding the detail pipe gets an error, not a hang
    kind, detail = "ok", ""
    try:
        code = compile(src, "<snippet>", "exec")
    except (SyntaxError, ValueError) as e:
        kind, detail = "syntax_error", repr(e)
    else:
        try:
            exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as e:
            if e.code not in (None, 0):
                kind, detail = "runtime_error", "SystemExit(%r)" % (e.code,)
        except (NameError, ModuleNotFoundError) as e:
            kind, detail = "name_error", "%s: %s" % (type(e).__name__, e)
        except BaseException as e:
            kind, detail = "runtime_error", "%s: %s" % (type(e).__name__, e)
    try:
        os.write(w, " ".join(detail.split())[:300].encode("utf-8", "replace"))
    except OSError:
        pass
    os._exit(CODES[kind])  # skip atexit hooks and non-daemon threads the snippet may have left

def fate(status, detail):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else sig
        return "killed", "signal %s" % (name,)
    code = os.waitstatus_to_exitcode(status)
    kind = next((k for k, c in CODES.items() if c == code and k not in ("killed", "timeout")), None)
    if kind is None:
        return "runtime_error", "exited with status %d before the runner finished" % code
    return kind, detail

def run_delay(path):
    """Seconds the task at /proc/... has waited runnable for a CPU (0 where the kernel keeps no
    schedstat)."""
    try:
        with open(path + "/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0

def cpu_time(pid):
    """CPU seconds of pid, its threads and its reaped children (/proc/<pid>/stat
    utime+stime+cutime+cstime: the kernel scales them to the precise runtime; RLIMIT_CPU's own check
    samples by ticks and ran ~15% ahead of it on a loaded machine, so the limit is judged here and
    RLIMIT_CPU is only the backstop)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0

def load_wait(pid):
    """(the most any thread of pid has waited for a CPU, whether one is runnable now). A thread's
    current wait on the run queue enters run_delay only when it gets the CPU, so the blocked limit
    is judged only when none is."""
    waited, runnable = 0.0, False
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return waited, runnable
    for tid in tids:
        path = "/proc/%d/task/%s" % (pid, tid)
        waited = max(waited, run_delay(path))
        try:
            with open(path + "/stat") as f:
                runnable = runnable or f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            pass
    return waited, runnable

def wait_child(pid, start, cpu, blocked):
    """Reap until the snippet's process ends (orphans too: we are pid 1), killing it once it has
    used `cpu` CPU seconds or been blocked for `blocked` idle-equivalent seconds -> (status, rusage,
    idle-equivalent seconds)."""
    waited = elapsed = late = 0.0
    while True:
        # when the wake-up came: our own wait for a CPU is load, not the snippet
        now = time.monotonic() - late
        ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if ended is not None and ended.si_pid != pid:
            os.waitpid(ended.si_pid, 0)  # an orphan
            continue
        if ended is not None:
            # a zombie keeps its counts until it is reaped
            waited = max(waited, run_delay("/proc/%d" % pid))
            _, status, usage = os.wait4(pid, 0)
            return status, usage, max(elapsed, now - start - waited)
        w, runnable = load_wait(pid)
        waited, used = max(waited, w), cpu_time(pid)
        if not runnable:
            elapsed = max(elapsed, now - start - waited)
        if used >= cpu or elapsed > blocked:
            os.kill(pid, signal.SIGKILL)
        # the earliest either limit can be reached (CPU time grows at most as fast as the wall clock
        # per thread)
        wait = min(cpu - used, 0.05 if runnable else blocked - elapsed)
        mine = run_delay("/proc/self")
        signal.sigtimedwait([signal.SIGCHLD], max(wait, 0.01))
        late = run_delay("/proc/self") - mine

def main():
    mem, nproc, fsize, nofile = map(int, sys.argv[2:6])
    cpu, blocked = float(sys.argv[1]), float(sys.argv[6])
    # RLIMIT_CPU: a backstop past the limit judged below (SIGXCPU, SIGKILL 1 s later)
    hard_cpu = int(cpu) + 2
    src = sys.stdin.read()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # sigtimedwait wakes when a child ends
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    os.closerange(3, 1 << 16)  # nothing bwrap or the host left open reaches the child
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    for res, lim in ((resource.RLIMIT_CPU, (hard_cpu - 1, hard_cpu)),
                     (resource.RLIMIT_AS, (mem, mem)),
                     (resource.RLIMIT_NPROC, (nproc, nproc)),
                     (resource.RLIMIT_FSIZE, (fsize, fsize)),
                     (resource.RLIMIT_NOFILE, (nofile, nofile))):
        resource.setrlimit(res, lim)
    r, w = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(src, w)
    os.close(w)
    status, usage, elapsed = wait_child(pid, start, cpu, blocked)
    try:
        # whatever the snippet left running (kill(-1) spares pid 1 itself)
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.set_blocking(r, False)
    try:
        # a flood of the pipe is cut at 512 bytes
        detail = os.read(r, 512).decode("utf-8", "replace")
    except BlockingIOError:
        detail = ""
    used = usage.ru_utime + usage.ru_stime
    xcpu = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU
    if used >= cpu or xcpu:
        kind, detail = "timeout", "cpu time %.2f s, limit %g s" % (used, cpu)
    elif elapsed > blocked:
        kind = "timeout"
        detail = "blocked %.2f s > %g s (wall clock less waiting for a CPU)" % (elapsed, blocked)
    else:
        kind, detail = fate(status, detail)
    os.write(1, (" ".join(detail.split())[:300] + "\n").encode())
    os._exit(CODES[kind])
main()
'''.replace("@EXIT_CODES@", repr(EXIT_CODES))

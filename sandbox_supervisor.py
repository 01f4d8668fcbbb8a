"""The supervisor: the Python program that runs inside the sandbox as its pid 1 (split from sandbox.py for size).

It is source text, not code this process runs: `sandbox.bwrap_command` passes RUNNER to the sandbox's interpreter
with `-c`. What it guards against is listed in sandbox.py's docstring and tested in tests/test_sandbox.py.
"""
# The supervisor's exit status per outcome (the snippet's child uses the first four for its own class). Above
# any status Python or a shell picks by itself, below bwrap's 128+signal.
EXIT_CODES = {"ok": 100, "syntax_error": 101, "name_error": 102, "runtime_error": 103, "killed": 104}

# The supervisor: pid 1 of the sandbox. argv = cpu, as, nproc, fsize, nofile; stdin = the code. It forks the
# snippet as its child and learns the child's class from the child's exit status; the child's one-line detail
# comes on a pipe read only after the child is dead. The report (its stdout, a host file) is written only by
# the supervisor, after every other process in the namespace has been killed, as "<detail>\n"; the outcome is
# the supervisor's exit status. PR_SET_DUMPABLE=0 closes /proc/1/mem and /proc/1/fd to the child; seccomp
# closes ptrace; pid 1 ignores SIGINT here and, as a namespace init, every signal it has no handler for.
RUNNER = r'''
import os, resource, signal, sys
CODES = @EXIT_CODES@

def child(src, w):
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
        return "killed", "signal %s" % (signal.Signals(sig).name if sig in signal.valid_signals() else sig)
    code = os.waitstatus_to_exitcode(status)
    kind = next((k for k, c in CODES.items() if c == code and k != "killed"), None)
    if kind is None:
        return "runtime_error", "exited with status %d before the runner finished" % code
    return kind, detail

def main():
    cpu, mem, nproc, fsize, nofile = map(int, sys.argv[1:6])
    src = sys.stdin.read()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.closerange(3, 1 << 16)  # nothing bwrap or the host left open reaches the child
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    for res, lim in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                     (resource.RLIMIT_NPROC, (nproc, nproc)), (resource.RLIMIT_FSIZE, (fsize, fsize)),
                     (resource.RLIMIT_NOFILE, (nofile, nofile))):
        resource.setrlimit(res, lim)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        child(src, w)
    os.close(w)
    while True:
        got, status = os.wait()  # as pid 1 it also reaps the snippet's orphans
        if got == pid:
            break
    try:
        os.kill(-1, signal.SIGKILL)  # whatever the snippet left running (kill(-1) spares pid 1 itself)
    except ProcessLookupError:
        pass
    os.set_blocking(r, False)
    try:
        detail = os.read(r, 512).decode("utf-8", "replace")  # a flood of the pipe is cut at 512 bytes
    except BlockingIOError:
        detail = ""
    kind, detail = fate(status, detail)
    os.write(1, (" ".join(detail.split())[:300] + "\n").encode())
    os._exit(CODES[kind])
main()
'''.replace("@EXIT_CODES@", repr(EXIT_CODES))

"""The sandbox contains hostile snippets, and the outcome classes are right on small known snippets.

Every attack from the reward issue runs for real; the parent (this pytest process) must survive each one and
no file outside the sandbox's own temp dir may change.
"""
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

import sandbox

OK, STATUS = sandbox.sandbox_status()
needs_sandbox = pytest.mark.skipif(not OK, reason=f"no sandbox here: {STATUS}")


@needs_sandbox
@pytest.mark.parametrize("code, outcome", [
    ("x = sorted([3, 1, 2])", "ok"),
    ("import os, json\njson.dumps({'a': 1})", "ok"),
    ("import sys; sys.exit(0)", "ok"),
    ("x = [1, 2", "syntax_error"),
    ("return 1", "syntax_error"),  # parses, but the compiler rejects it: caught inside the sandbox
    ("mylist.sort()", "name_error"),  # CoNaLa style: a free variable
    ("import pandas as pd\npd.DataFrame()", "name_error"),  # a third-party module the sandbox lacks
    ("1 / 0", "runtime_error"),
    ("int('x')", "runtime_error"),
    ("import sys; sys.exit(3)", "runtime_error"),
    ("while True:\n    pass", "timeout"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "killed"),
])
def test_outcome_classes(code, outcome):
    assert sandbox.execute_snippet(code, timeout_s=1.0).outcome == outcome


@needs_sandbox
def test_kill_parent_is_contained():
    me = os.getpid()
    for code in ["import os; os.kill(os.getppid(), 9)", f"import os; os.kill({me}, 9)", "import os; os.kill(-1, 9)"]:
        res = sandbox.execute_snippet(code, timeout_s=2.0)
        assert res.outcome in sandbox.OUTCOMES
    assert os.getpid() == me  # still here


def _pids_in_namespace(ns: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and os.readlink(p / "ns" / "pid") == ns:
                found.append(int(p.name))
        except OSError:
            pass
    return found


@needs_sandbox
def test_fork_bomb_is_bounded_and_reaped():
    # Bounded in the test itself: 11 doublings = at most 2048 processes even if the sandbox were broken.
    code = ("import os, time\nroot = os.getpid()\n"
            "for _ in range(11):\n    try:\n        os.fork()\n    except OSError:\n        break\n"
            "if os.getpid() != root:\n    time.sleep(20)\n    os._exit(0)\n"
            "time.sleep(0.5)\nn = sum(p.isdigit() for p in os.listdir('/proc'))\n"
            "raise RuntimeError('procs=%d ns=%s' % (n, os.readlink('/proc/self/ns/pid')))\n")
    res = sandbox.execute_snippet(code, timeout_s=10.0)
    assert res.outcome == "runtime_error", res
    procs = int(res.detail.split("procs=")[1].split()[0])
    assert procs <= sandbox.NPROC + 1, res.detail  # RLIMIT_NPROC held (+1: bwrap's init is pid 1)
    ns = res.detail.split("ns=")[1].strip()
    deadline = time.monotonic() + 5
    while _pids_in_namespace(ns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_in_namespace(ns) == []  # the sleeping children died with the sandbox


def _descendants(root: int) -> list[int]:
    parent = {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            pass
    out, frontier = [], [root]
    while frontier:
        kids = [c for c, pp in parent.items() if pp in frontier]
        out += kids
        frontier = kids
    return out


@needs_sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="the uid drop applies to a root parent")
def test_root_parent_drops_to_nobody():
    seen = {}
    t = threading.Thread(target=lambda: seen.update(res=sandbox.execute_snippet("import time; time.sleep(1.5)", 5)))
    t.start()
    time.sleep(0.7)
    uids = set()
    for pid in _descendants(os.getpid()):
        try:
            line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
            uids.update(int(u) for u in line.split()[1:])  # real, effective, saved, fs
        except (OSError, StopIteration):
            pass
    t.join()
    assert seen["res"].outcome == "ok"
    assert uids == {sandbox.NOBODY}, uids


@needs_sandbox
def test_infinite_loop_times_out():
    start = time.monotonic()
    res = sandbox.execute_snippet("while True: pass", timeout_s=1.0)
    assert res.outcome == "timeout"
    assert time.monotonic() - start < 3.0


@needs_sandbox
def test_huge_allocation_fails_inside():
    for code in ["x = bytearray(50 * 10**9)", "x = 'a' * (50 * 10**9)"]:
        res = sandbox.execute_snippet(code, timeout_s=5.0)
        assert res.outcome == "runtime_error" and "MemoryError" in res.detail, res


@needs_sandbox
def test_writes_outside_the_temp_dir_fail():
    shared = Path(tempfile.mkdtemp(prefix="sandbox-target-"))  # world-writable: only the sandbox can stop it
    repo = Path(tempfile.mkdtemp(prefix=".sandbox-target-", dir=Path(__file__).parent))
    try:
        for d in (shared, repo):
            d.chmod(0o777)
            (d / "keep.txt").write_text("canary")
            (d / "keep.txt").chmod(0o666)
            code = (f"open({str(d / 'evil.txt')!r}, 'w').write('x')\n")
            assert sandbox.execute_snippet(code, timeout_s=2.0).outcome == "runtime_error"
            code = f"import shutil; shutil.rmtree({str(d)!r})"
            assert sandbox.execute_snippet(code, timeout_s=2.0).outcome == "runtime_error"
            assert sorted(os.listdir(d)) == ["keep.txt"] and (d / "keep.txt").read_text() == "canary"
        # the working directory itself is writable and private, and vanishes afterwards
        res = sandbox.execute_snippet("open('out.txt', 'w').write('x' * 1000)\nimport os\n"
                                      "assert os.getcwd() == os.environ['HOME'] == '/tmp/work'", timeout_s=2.0)
        assert res.outcome == "ok", res
        assert not Path("/tmp/work/out.txt").exists()
    finally:
        shutil.rmtree(shared)
        shutil.rmtree(repo)


@needs_sandbox
def test_rmtree_home_is_sandboxed():
    home = Path.home()
    before = home.exists() and sorted(os.listdir(home))
    code = "import os, shutil\nshutil.rmtree(os.path.expanduser('~'), ignore_errors=True)\n"
    code += f"shutil.rmtree({str(home)!r})\n"
    res = sandbox.execute_snippet(code, timeout_s=2.0)
    assert res.outcome in ("ok", "runtime_error")
    assert home.exists() and set(before) <= set(os.listdir(home))


@needs_sandbox
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        code = f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"
        res = sandbox.execute_snippet(code, timeout_s=3.0)
        assert res.outcome == "runtime_error" and "ConnectionRefused" in res.detail, res
        with pytest.raises(socket.timeout):
            server.accept()  # nothing reached the parent's loopback
        res = sandbox.execute_snippet("import socket; socket.create_connection(('1.1.1.1', 53), timeout=1)", 3.0)
        assert res.outcome == "runtime_error" and "unreachable" in res.detail.lower(), res
    finally:
        server.close()


@needs_sandbox
def test_output_flood_does_not_grow_the_parent():
    res = sandbox.execute_snippet("import os\nwhile True:\n    os.write(3, b'x' * 65536)\n", timeout_s=2.0)
    assert res.outcome in ("killed", "runtime_error", "timeout")


def test_execute_many_deduplicates_and_keeps_order(monkeypatch):
    calls = []
    monkeypatch.setattr(sandbox, "sandbox_status", lambda: (True, "fake"))
    monkeypatch.setattr(sandbox, "_run_sandboxed",
                        lambda code, t, py: calls.append(code) or sandbox.ExecResult("ok", code))
    out = sandbox.execute_many(["a = 1", "b = 2", "a = 1"], timeout_s=1.0)
    assert [r.detail for r in out] == ["a = 1", "b = 2", "a = 1"]
    assert sorted(calls) == ["a = 1", "b = 2"]


def test_unavailable_sandbox_refuses_to_run(monkeypatch):
    sandbox.sandbox_status.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        ok, detail = sandbox.sandbox_status()
        assert not ok and "bubblewrap" in detail
        with pytest.raises(sandbox.SandboxUnavailable):
            sandbox.execute_snippet("x = 1")
    finally:
        sandbox.sandbox_status.cache_clear()


def test_classify_without_report():
    assert sandbox.classify(137, "") == ("killed", "signal SIGKILL")
    assert sandbox.classify(-9, "")[0] == "killed"
    assert sandbox.classify(3, "")[0] == "runtime_error"
    assert sandbox.classify(sandbox.EXIT_CODES["name_error"], "NameError: x\n") == ("name_error", "NameError: x")
    assert sandbox.classify(0, "ok\n")[0] == "runtime_error"  # only the supervisor's exit status names an outcome

"""Benchmark (not a test): the cost the last sandbox change adds to one sandboxed execution.

The sandbox before it (`git show c0cc552:sandbox.py` and its `sandbox_limits.py`, loaded as modules from a temp
folder) and the one in this tree run the same trivial snippets, interleaved, in one process:

    python bench/sandbox_bench.py            # --repeats N (default 30)

Times are wall-clock milliseconds per `execute_snippet`, best and median of N: a sandboxed execution is almost
all process start-up (bwrap, namespaces, the interpreter), which CPU time of this process would not see. The
machine is shared, so the best of N is the figure to compare; the median shows the neighbours.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import sandbox  # noqa: E402

BEFORE = "c0cc552"  # the last commit before the seccomp side doors, the /usr view and the uid per slot
SNIPPETS = {"ok": "x = sorted([3, 1, 2])", "name_error": "mylist.sort()", "runtime_error": "1 / 0"}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    path.unlink()  # loaded: the module keeps no hold on its file
    return mod


def load_old(commit: str):
    """That commit's sandbox.py, bound to that commit's sandbox_limits.py (not this tree's)."""
    folder = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    for module in ("sandbox_limits", "sandbox"):
        src = subprocess.run(["git", "show", f"{commit}:{module}.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        (folder / f"{module}_before.py").write_text(src.replace("import sandbox_limits\n",
                                                                "import sandbox_limits_before as sandbox_limits\n"))
        mod = _load(f"{module}_before", folder / f"{module}_before.py")
    folder.rmdir()
    return mod


def main():
    sys.path.append(str(ROOT))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if args.repeats < 1:
        sys.exit("error: --repeats must be >= 1")
    old = load_old(BEFORE)
    for name, mod in (("before", old), ("after", sandbox)):
        ok, detail = mod.sandbox_status()
        if not ok:
            sys.exit(f"error: {name}: {detail}")
    times = {(v, k): [] for v in ("before", "after") for k in SNIPPETS}
    for _ in range(args.repeats):
        for kind, code in SNIPPETS.items():
            for version, mod in (("before", old), ("after", sandbox)):
                t = time.perf_counter()
                res = mod.execute_snippet(code, timeout_s=5.0)
                times[version, kind].append((time.perf_counter() - t) * 1e3)
                assert res.outcome == kind, (version, kind, res)
    print(f"sandbox cost per execute_snippet, ms wall clock, best / median of {args.repeats} interleaved runs")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared with other jobs)")
    print(f"{'snippet':<15}{'before best':>12}{'after best':>12}{'added':>9}{'before med':>12}{'after med':>11}")
    for kind in SNIPPETS:
        b, a = times["before", kind], times["after", kind]
        print(f"{kind:<15}{min(b):>12.1f}{min(a):>12.1f}{min(a) - min(b):>+9.1f}"
              f"{statistics.median(b):>12.1f}{statistics.median(a):>11.1f}")
    print("layers after:", "; ".join(f"{k} {v.split(':')[0]}" for k, v in sandbox.layers().items()))


if __name__ == "__main__":
    main()

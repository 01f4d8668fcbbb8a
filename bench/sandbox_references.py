"""Benchmark (not a test): the exec outcome of every CoNaLa reference, to check a sandbox change keeps them.

    nice -n 19 python bench/sandbox_references.py --out after.json                  # this tree's sandbox
    nice -n 19 python bench/sandbox_references.py --sandbox-dir OLD --out before.json  # another copy of it
    python bench/sandbox_references.py --compare before.json after.json             # counts, and what changed

OLD is a folder holding another version's sandbox.py and sandbox_limits.py, e.g.
`git archive COMMIT sandbox.py sandbox_limits.py | tar -x -C OLD`. One worker by default: the sweep is ~2,900
sandboxes and must not starve a training run beside it.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("conala-train.json", "conala-test.json")


def references() -> list[tuple[str, str]]:
    """(split/index, snippet) for every record of both splits."""
    out = []
    for split in SPLITS:
        records = json.loads((ROOT / "conala-corpus" / split).read_text())
        out += [(f"{split.split('-')[1].split('.')[0]}/{i}", r["snippet"]) for i, r in enumerate(records)]
    return out


def sweep(sandbox_dir: str | None, timeout_s: float, workers: int) -> dict[str, str]:
    sys.path.insert(0, sandbox_dir or str(ROOT))
    import sandbox

    ok, detail = sandbox.sandbox_status()
    if not ok:
        sys.exit(f"error: {detail}")
    refs = references()
    start = time.monotonic()
    results = sandbox.execute_many([code for _, code in refs], timeout_s=timeout_s, workers=workers)
    print(f"{len(refs)} references in {time.monotonic() - start:.0f} s with {sandbox.__file__}")
    return {key: res.outcome for (key, _), res in zip(refs, results)}


def counts(outcomes: dict[str, str]) -> dict[str, dict[str, int]]:
    by_split = collections.defaultdict(collections.Counter)
    for key, outcome in outcomes.items():
        by_split[key.split("/")[0]][outcome] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(by_split.items())}


def main():
    sys.path.append(str(ROOT))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sandbox-dir", help="folder with the sandbox.py to measure (default: this tree's)")
    ap.add_argument("--out", help="write {split/index: outcome} here as JSON")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --out files")
    ap.add_argument("--timeout_s", type=float, default=2.0)  # config.exec_timeout_s
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        print("before:", counts(before))
        print("after: ", counts(after))
        changed = {k: (before[k], after.get(k)) for k in before if before[k] != after.get(k)}
        print(f"changed: {len(changed)}", json.dumps(changed, indent=1) if changed else "")
        return
    outcomes = sweep(args.sandbox_dir, args.timeout_s, args.workers)
    print(counts(outcomes))
    if args.out:
        Path(args.out).write_text(json.dumps(outcomes, indent=0))


if __name__ == "__main__":
    main()

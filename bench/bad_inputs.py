"""Benchmark (not a test): a table of bad inputs against `rlhf.py --config test`, `diagnose.py` and `metrics.py`.

    python bench/bad_inputs.py                 # this checkout; ~5 min on 2 cores (one real test run first)
    python bench/bad_inputs.py --root DIR      # another checkout, e.g. a worktree at an older commit
    python bench/bad_inputs.py --only data     # one class

Each case runs in a subprocess with a timeout and is classified:
  clear      non-zero exit, no traceback, and the last stderr line is `error: ...` (diagnose: a ❌ line instead)
  traceback  a Python traceback anywhere in the output
  exit-0     the run "succeeded" on a bad input (silently wrong)
  timeout    still running after --timeout seconds
  unclear    non-zero exit without a traceback or an error line
A case may also protect files (a run folder, the dataset): `lost` counts cases where any protected file is no
longer there with its bytes, neither in place nor in a `<dir>.old-*` sibling. The two `ok` cases are inputs that
must succeed in bounded time (RUBY on large code), counted as clear when they exit 0 in time.
Every destructive case works on copies in a temporary folder (HOME is faked for the HOME case).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bad_inputs3

HERE = Path(__file__).resolve().parent.parent

# --key=value cases, by the examples and then every field's edge (one line each: `flags`).
CONFIG_CASES = [
    "--sft_epochs=0", "--sft_epochs=-1", "--sft_learning_rate=nan", "--learning_rate=nan", "--learning_rate=-1",
    "--learning_rate=inf", "--reward_learning_rate=0", "--exec_timeout_s=-1 --w_exec=1", "--exec_timeout_s=nan",
    "--exec_timeout_s=inf --w_exec=1", "--kl_horizon=0", "--kl_horizon=-5", "--reward_scale=0", "--reward_scale=-1",
    "--bootstrap_samples=0", "--bootstrap_samples=-1", "--ppo_steps=0", "--ppo_steps=-1", "--test_limit=-1",
    "--train_limit=-5", "--temperature=inf", "--temperature=nan", "--temperature=0", "--temperature=-1",
    "--bertscore_layers=7", "--bertscore_layers=0", "--bertscore_layers=-1", "--save_every=-1", "--eval_every=-1",
    "--top_p=0", "--top_p=nan", "--top_p=1.5", "--val_fraction=0", "--val_fraction=1", "--val_fraction=nan",
    "--max_new_tokens=0", "--max_prompt_len=0", "--batch_size=0", "--mini_batch_size=0", "--micro_batch_size=3",
    "--batch_size=6", "--sft_batch_size=0", "--sft_micro_batch_size=3", "--sft_max_len=0", "--reward_max_len=0",
    "--reward_epochs=0", "--reward_batch_size=0", "--reward_max_train_pairs=-1", "--reward_policy_samples=-1",
    "--reward_policy_intents=-1", "--gamma=1.5", "--gamma=nan", "--lam=-0.1", "--cliprange=0", "--cliprange=-0.2",
    "--cliprange_value=0", "--vf_coef=-1", "--vf_coef=nan", "--max_grad_norm=0", "--max_grad_norm=nan",
    "--init_kl_coef=-1", "--kl_target=0", "--kl_target=nan", "--missing_eos_penalty=nan", "--target_kl=-1",
    "--reward_clip_min=0.9 --reward_clip_max=0.1", "--reward_clip_min=nan", "--w_rm=nan", "--w_rm=-1",
    "--w_syntax=inf", "--seed=-1", "--seed=99999999999999999999", "--ppo_epochs=0", "--eval_batch_size=0",
    "--device=tpu", "--dtype=fp64", "--kl_estimator=k2", "--prompt_format=xml", "--codebleu_tokenizer=x",
    "--stages=", "--stages=sft,rl", "--conala_path=", "--policy_model=", "--do_sample=maybe", "--seed=abc",
    "--lerning_rate=1e-4",
]

GOOD = {"intent": "sort a list", "rewritten_intent": "sort list `l`", "snippet": "sorted(l)", "question_id": 1}


def corpus(tmp: Path, name: str, train: bytes | None = None, test: bytes | None = None, sums: bytes | None = None):
    """A copy of conala-corpus with some files replaced."""
    root = tmp / name
    shutil.copytree(HERE / "conala-corpus", root)
    for fname, content in (("conala-train.json", train), ("conala-test.json", test), ("SHA256SUMS", sums)):
        if content is not None:
            (root / fname).write_bytes(content)
    return root


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()


DATA_FILES = {  # name -> (train bytes, test bytes)
    "train not UTF-8": (b'[{"intent": "caf\xe9", "rewritten_intent": null, "snippet": "x", "question_id": 1}]', None),
    "test not UTF-8": (None, b"\xff\xfe[]"),
    "train nested 100k deep": (b"[" * 100_000 + b"]" * 100_000, None),
    "test nested 100k deep": (None, b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "10 MB intent": (dumps([dict(GOOD, intent="x " * 5_000_000, rewritten_intent=None)] + [GOOD] * 40), None),
    "10 MB snippet": (dumps([dict(GOOD, snippet="y" * 10_000_000)] + [GOOD] * 40), None),
    "UTF-8 BOM": (b"\xef\xbb\xbf" + dumps([GOOD] * 40), None),
    "list of ints": (dumps([1, 2, 3]), None),
    "record without snippet": (dumps([{k: v for k, v in GOOD.items() if k != "snippet"}]), None),
    "empty file": (b"", None),
    "top-level object": (dumps({"records": [GOOD]}), None),
    "NaN intent": (b'[{"intent": NaN, "rewritten_intent": null, "snippet": "x", "question_id": 1}]', None),
    "string question_id": (dumps([dict(GOOD, question_id="7")]), None),
}
SUMS = {
    "SHA256SUMS one field": b"0123abcd\n",
    "SHA256SUMS three fields": b"a b c\n",
    "SHA256SUMS not UTF-8": b"\xff\xfe\xfd  conala-train.json\n",
    "SHA256SUMS binary marker": b"b3f96344efa3bb819e2fe66cfd68be289ca4e4d37f5af19c32cf4ae211e8077e *conala-test.json\n",
}


def truncate(path: Path, size: int = 20):
    path.write_bytes(path.read_bytes()[:size])


def flip_byte(path: Path, at: float = 0.5):
    """Same size, damaged bytes: what a bad disk or a partial copy leaves; only SHA256SUMS can tell."""
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def set_state(run: Path, completed: list[str]):
    state = json.loads((run / "state.json").read_text())
    state["completed"] = completed
    (run / "state.json").write_text(json.dumps(state))


# Each damages a copy of a finished run; `partial` first marks only sft+reward done, so PPO reloads its checkpoint.
RESUME = {
    "state.json truncated": lambda r: truncate(r / "state.json", 10),
    "state.json empty": lambda r: (r / "state.json").write_text(""),
    "state.json a list": lambda r: (r / "state.json").write_text("[1]"),
    "state.json wrong shape": lambda r: (r / "state.json").write_text('{"completed": "sft"}'),
    "state.json not UTF-8": lambda r: (r / "state.json").write_bytes(b"\xff{}"),
    "config.json a list": lambda r: (r / "config.json").write_text("[1, 2]"),
    "config.json truncated": lambda r: truncate(r / "config.json"),
    "config.json not UTF-8": lambda r: (r / "config.json").write_bytes(b"\xff\xfe"),
    "config.json bad value": lambda r: (r / "config.json").write_text('{"config_name": "test", "ppo_steps": -1}'),
    "sft weights truncated": lambda r: (set_state(r, ["sft", "reward"]),
                                        truncate(r / "checkpoint-sft" / "model.safetensors", 1000)),
    "final weights truncated": lambda r: truncate(r / "checkpoint-final" / "model.safetensors", 1000),
    "reward head truncated": lambda r: (set_state(r, ["sft", "reward"]),
                                        truncate(r / "checkpoint-reward" / "reward_head.pt", 50)),
    "trainer_state.pt missing": lambda r: (set_state(r, ["sft", "reward"]),
                                           (r / "checkpoint-ppo-3" / "trainer_state.pt").unlink()),
    "trainer_state.pt truncated": lambda r: (set_state(r, ["sft", "reward"]),
                                             truncate(r / "checkpoint-ppo-3" / "trainer_state.pt", 100)),
    "value_head.pt missing": lambda r: (set_state(r, ["sft", "reward"]),
                                        (r / "checkpoint-ppo-3" / "value_head.pt").unlink()),
    "sft weights damaged, same size": lambda r: (set_state(r, ["sft", "reward"]),
                                                 flip_byte(r / "checkpoint-sft" / "model.safetensors")),
    "trainer_state.pt damaged, same size": lambda r: (set_state(r, ["sft", "reward"]),
                                                      flip_byte(r / "checkpoint-ppo-3" / "trainer_state.pt")),
    "metrics.jsonl bad line": lambda r: open(r / "metrics.jsonl", "a").write('{"stage": "eval", "st\n'),
    "metrics.jsonl not an object": lambda r: open(r / "metrics.jsonl", "a").write("[1, 2]\n"),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def lost_files(folder: Path, before: dict[str, bytes]) -> int:
    """Protected files that are neither in place nor in a moved-aside `<folder>.old-*` with the same bytes."""
    homes = [folder] + sorted(folder.parent.glob(folder.name + ".old-*"))
    return sum(not any((h / rel).is_file() and (h / rel).read_bytes() == data for h in homes)
               for rel, data in before.items())


def build_cases(tmp: Path, base: Path, py: str, root: Path, only: str | None = None) -> list[dict]:
    want = lambda cls: not only or cls in only.split(",")  # noqa: E731 -- copies of the base run only when asked
    rlhf = [py, str(root / "rlhf.py")]
    diag = [py, str(root / "diagnose.py")]
    cases = []

    def add(cls, name, argv, protect=(), expect="error", env=None, cwd=None, hold=None):
        cases.append(dict(cls=cls, name=name, argv=argv, protect=list(protect), expect=expect, env=env, cwd=cwd,
                          hold=hold))

    for i, flags in enumerate(CONFIG_CASES):
        add("config", flags, rlhf + ["--config", "test", *flags.split(), f"--output_dir={tmp / f'cfg{i}'}"])
    for name, (train, test) in DATA_FILES.items():
        c = corpus(tmp, f"data-{len(cases)}", train, test)
        add("data", name, rlhf + ["--config", "test", f"--conala_path={c}", f"--output_dir={tmp / f'out{len(cases)}'}"])
    add("data", "conala_path is a file", rlhf + ["--config", "test", f"--conala_path={HERE / 'README.md'}"])
    add("data", "conala_path missing", rlhf + ["--config", "test", f"--conala_path={tmp / 'nowhere'}"])
    for name in ("train not UTF-8", "test nested 100k deep", "train nested 100k deep", "10 MB intent"):
        c = corpus(tmp, f"diag-{len(cases)}", *DATA_FILES[name])
        add("diagnose", name, diag + [f"--conala_path={c}"])
    for name, sums in SUMS.items():
        c = corpus(tmp, f"sums-{len(cases)}", sums=sums)
        expect = "ok" if name == "SHA256SUMS binary marker" else "error"  # `*name` is valid sha256sum output
        add("diagnose", name, diag + [f"--conala_path={c}"], expect=expect)
    add("diagnose", "--temperature=inf", diag + ["--config", "test", "--temperature=inf"])
    for name, damage in RESUME.items() if want("resume") else ():
        run = tmp / f"resume-{len(cases)}"
        shutil.copytree(base, run)
        damage(run)
        add("resume", name, rlhf + ["--resume", str(run)], protect=[run])
    add("resume", "resume folder missing", rlhf + ["--resume", str(tmp / "no-run")])
    add("resume", "resume a non-run folder", rlhf + ["--resume", str(HERE / "conala-corpus")])

    # --overwrite: the three reproductions, then the other targets that must never be replaced.
    if want("overwrite"):
        r = tmp / "ow-run"
        shutil.copytree(base, r)
        add("overwrite", "run + bad --conala_path", rlhf + ["--config", "test", f"--output_dir={r}", "--overwrite",
                                                             f"--conala_path={tmp / 'nowhere'}"], protect=[r])
        notes = tmp / "ow-notes"
        notes.mkdir()
        (notes / "thesis.txt").write_text("not a run")
        add("overwrite", "non-run folder + bad --conala_path", rlhf + ["--config", "test", f"--output_dir={notes}",
                                                                       "--overwrite", f"--conala_path={tmp / 'nowhere'}"],
            protect=[notes])
        ds = corpus(tmp, "ow-dataset")
        add("overwrite", "--output_dir=<dataset> --overwrite", rlhf + ["--config", "test", f"--output_dir={ds}",
                                                                       f"--conala_path={ds}", "--overwrite"],
            protect=[ds])
        r2 = tmp / "ow-run2"
        shutil.copytree(base, r2)
        add("overwrite", "run + a later step fails", rlhf + ["--config", "test", f"--output_dir={r2}", "--overwrite",
                                                              f"--policy_model={tmp / 'no-model'}"], protect=[r2])
        r3 = tmp / "ow-run3"
        shutil.copytree(base, r3)
        add("overwrite", "run holding --policy", rlhf + ["--config", "test", f"--output_dir={r3}", "--overwrite",
                                                          f"--policy={r3 / 'checkpoint-sft'}", "--stages=eval"],
            protect=[r3])
        home = tmp / "fake-home"
        shutil.copytree(HERE / "conala-corpus", home / "data")
        add("overwrite", "--output_dir=$HOME --overwrite", rlhf + ["--config", "test", f"--output_dir={home}",
                                                                   "--overwrite", "--stages=sft"],
            protect=[home], env={"HOME": str(home)})
        work = tmp / "fake-cwd"
        shutil.copytree(HERE / "conala-corpus", work / "conala-corpus")
        add("overwrite", "--output_dir=. --overwrite", rlhf + ["--config", "test", "--output_dir=.", "--overwrite",
                                                               "--stages=sft"], protect=[work], cwd=work)
        add("overwrite", "--output_dir is a file", rlhf + ["--config", "test", f"--output_dir={HERE / 'README.md'}"])

    # RUBY on large code must finish, in bounded time (metrics.py CLI, BERTScore off).
    lines = lambda n, k: "\n".join(f"x{i} = foo(a{i}, b[{i}] + {k}) * bar(c{i})" for i in range(n))  # noqa: E731
    for n in (100, 300):
        pred = tmp / f"ruby-{n}.jsonl"
        pred.write_text(json.dumps({"reference": lines(n, 1), "prediction": lines(n, 2)}) + "\n")
        add("metrics", f"RUBY on a {n}-line pair", [py, str(root / "metrics.py"), str(pred), "--no-bertscore"],
            expect="ok")
    bad_inputs3.build(add, tmp, base, py, root, HERE, corpus, want)  # round 3 (issue #26)
    return cases


def start_holder(hold, timeout: float, env: dict):
    """A writer of the case's folder, started first: once it has appended its argv.txt line (it owns the folder
    then) it is stopped (SIGSTOP), so it stays alive, holding whatever it holds, however long the case takes."""
    argv, folder = hold
    lines = lambda: (folder / "argv.txt").read_text().count("\n") if (folder / "argv.txt").exists() else 0  # noqa: E731
    before = lines()
    proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while lines() == before and proc.poll() is None and time.monotonic() - t0 < timeout:
        time.sleep(0.2)
    if proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
    return proc


def run_case(case: dict, timeout: float, root: Path) -> dict:
    before = {str(p): snapshot(p) for p in map(Path, case["protect"])}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               **(case["env"] or {}))
    holder = start_holder(case["hold"], timeout, env) if case.get("hold") else None
    t0 = time.perf_counter()
    try:
        res = subprocess.run(case["argv"], cwd=case["cwd"] or root, env=env, capture_output=True, text=True,
                             timeout=timeout, errors="replace")
        rc, out, err = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, str(e.stdout or ""), str(e.stderr or "")
    finally:
        if holder:
            holder.kill()
            holder.wait()
    seconds = time.perf_counter() - t0
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "")
    is_diag = case["argv"][1].endswith("diagnose.py")
    if rc is None:
        outcome = "timeout"
    elif "Traceback (most recent call last)" in out + err:
        outcome = "traceback"
    elif case["expect"] == "ok":  # diagnose ran through: its exit 1 reports this machine, not the input
        outcome = "clear" if rc == 0 or (is_diag and rc == 1) else "unclear"
    elif rc == 0:
        outcome = "exit-0"
    elif (is_diag and any(ln.startswith("❌") for ln in out.splitlines())) or last.startswith("error: "):
        outcome = "clear"
    else:
        outcome = "unclear"
    lost = sum(lost_files(Path(p), snap) for p, snap in before.items())
    detail = last if not is_diag else next((ln for ln in out.splitlines() if ln.startswith("❌")), last)
    return dict(case, argv=None, hold=None, protect=[str(p) for p in case["protect"]], outcome=outcome, rc=rc,
                lost=lost,
                seconds=round(seconds, 1), detail=detail[:200])


def main() -> int:
    sys.path.append(str(HERE))
    from plumbing.cli_help import ArgumentParser  # one-line errors

    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(HERE), help="checkout whose rlhf.py/diagnose.py/metrics.py to run")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", help="run these classes (comma-separated): config, data, diagnose, resume, overwrite, "
                   "metrics; round 3: sharing, state, flags, unicode, paths, locale, absurd, nesting")
    p.add_argument("--base", help="a finished `rlhf.py --config test` run to copy for the resume cases")
    p.add_argument("--json", help="write every case's outcome here")
    args = p.parse_args()
    root = Path(args.root).resolve()
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as tmp:
        tmp = Path(tmp)
        base = Path(args.base) if args.base else tmp / "base-run"
        if not args.base:
            print(f"bad_inputs: making a base run with {root / 'rlhf.py'} --config test ...", flush=True)
            res = subprocess.run([args.python, str(root / "rlhf.py"), "--config", "test", f"--output_dir={base}"],
                                 cwd=root, capture_output=True, text=True,
                                 env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
            if res.returncode:
                print(res.stderr[-2000:])
                return 1
        cases = [c for c in build_cases(tmp, base, args.python, root, args.only)
                 if not args.only or c["cls"] in args.only.split(",")]
        print(f"bad_inputs: {len(cases)} cases, {args.jobs} at a time, {args.timeout:.0f} s each at most", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, args.timeout, root), cases))
    kinds = ("clear", "traceback", "exit-0", "timeout", "unclear")
    print(f"\n{'class':<10} {'cases':>5} " + " ".join(f"{k:>9}" for k in kinds) + f" {'lost':>5}")
    for cls in dict.fromkeys(r["cls"] for r in results):
        rows = [r for r in results if r["cls"] == cls]
        print(f"{cls:<10} {len(rows):>5} " + " ".join(f"{sum(r['outcome'] == k for r in rows):>9}" for k in kinds)
              + f" {sum(r['lost'] > 0 for r in rows):>5}")
    print(f"{'total':<10} {len(results):>5} " + " ".join(f"{sum(r['outcome'] == k for r in results):>9}"
                                                         for k in kinds) + f" {sum(r['lost'] > 0 for r in results):>5}")
    print("\nnot clear, or lost files:")
    for r in results:
        if r["outcome"] != "clear" or r["lost"]:
            print(f"  [{r['cls']}] {r['name']}: {r['outcome']}, rc {r['rc']}, lost {r['lost']}, {r['seconds']} s"
                  f" -- {r['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

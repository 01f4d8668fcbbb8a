"""Round 3 of bench/bad_inputs.py (issue #26): run folders shared between writers, resume state of the wrong shape,
script flags, Unicode, paths and filesystems, locale, absurd values inside the domains, deeply nested code.

build(...) adds these cases to bad_inputs.py's list; a case may name `hold`, a writer started first on the same
folder and kept alive while the case runs (bad_inputs.start_holder waits until that writer has appended its
argv.txt line, i.e. owns the folder, then stops it with SIGSTOP). Items whose right answer is a correct exit 0
with a changed result (the stale evaluation cache, the redone stage after the recovery advice) are tested in
tests/, not here: exit codes alone cannot tell them from the old behaviour.
"""
from __future__ import annotations

import json
import os
import shutil


def set_state(run, **changes):
    state = json.loads((run / "state.json").read_text())
    (run / "state.json").write_text(json.dumps(dict(state, **changes)))


def flip_last(path):
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def drop_sums_line(folder, name):
    sums = folder / "SHA256SUMS"
    sums.write_text("".join(ln for ln in sums.read_text().splitlines(True) if not ln.rstrip().endswith(name)))


# Each damages a copy of a finished run, then `rlhf.py --resume` it (with the extra flags given).
STATE = {
    "SHA256SUMS deleted, weights damaged": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                                       (r / "checkpoint-sft" / "SHA256SUMS").unlink(),
                                                       flip_last(r / "checkpoint-sft" / "model.safetensors")), []),
    "weights line removed, weights damaged": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                                         drop_sums_line(r / "checkpoint-sft", "model.safetensors"),
                                                         flip_last(r / "checkpoint-sft" / "model.safetensors")), []),
    "metrics.jsonl {} row": (lambda r: open(r / "metrics.jsonl", "a").write("{}\n"), []),
    "evaluated.base without gold": (lambda r: set_state(r, evaluated={"base": {"per_example": {}}}), []),
    "checkpoint-ppo-² folder": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                            (r / "checkpoint-final").rename(r / "final-aside"),
                                            shutil.copytree(r / "checkpoint-ppo-3", r / "checkpoint-ppo-²")),
                                 ["--stages=ppo"]),  # not a step: PPO resumes from checkpoint-ppo-3 (expect ok)
    "checkpoint-ppo-9 a file": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                           (r / "checkpoint-ppo-9").write_text("x")), []),
    "--learning_rate mid-PPO": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                           (r / "checkpoint-final").rename(r / "final-aside")),
                                ["--learning_rate=1e-3"]),
    "--ppo_steps below the steps done": (lambda r: (set_state(r, completed=["sft", "reward"]),
                                                    (r / "checkpoint-final").rename(r / "final-aside")),
                                         ["--ppo_steps=2"]),
    "checkpoint-sft a link, sft redone": (lambda r: (shutil.move(r / "checkpoint-sft", r.parent / f"{r.name}-sft"),
                                                     (r / "checkpoint-sft").symlink_to(r.parent / f"{r.name}-sft"),
                                                     set_state(r, completed=[])), ["--stages=sft"]),
}
SURROGATE = {"train snippet": ("conala-train.json", "snippet"), "train intent": ("conala-train.json", "intent"),
             "test snippet": ("conala-test.json", "snippet")}
ABSURD = ["--temperature=1e-40", "--cliprange_value=1e39", "--val_fraction=0.9999999",
          "--reward_policy_samples=1000000000", "--bon_n=1000000000", f"--batch_size={2**30}"]
ASCII_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""}


def build(add, tmp, base, py, root, here, corpus, want=lambda cls: True):
    rlhf, reward, diag = [py, str(root / "rlhf.py")], [py, str(root / "reward.py")], [py, str(root / "diagnose.py")]

    def copy(name):
        run = tmp / name
        shutil.copytree(base, run, symlinks=True)
        return run

    # sharing: one writer per folder, reward.py guarded like rlhf.py, inputs and checkpoints behind links
    if want("sharing"):
        r = copy("share-reward")
        add("sharing", "reward.py into a finished run", reward + ["--config", "test", f"--output_dir={r}"], protect=[r])
        add("sharing", "reward.py --output_dir is a file", reward + ["--config", "test",
                                                                     f"--output_dir={here / 'README.md'}"])
        r = copy("share-resume")
        add("sharing", "a second --resume while one runs", rlhf + ["--resume", str(r), "--stages=eval"],
            hold=(rlhf + ["--resume", str(r), "--stages=eval"], r))
        r = copy("share-overwrite")  # no `protect`: the live run itself rewrites its files
        add("sharing", "--overwrite of a live run", rlhf + ["--config", "test", f"--output_dir={r}", "--overwrite"],
            hold=(rlhf + ["--resume", str(r), "--stages=eval"], r))
        r = copy("share-link")
        (r / "data").symlink_to(corpus(tmp, "share-link-data"))
        add("sharing", "--overwrite, --conala_path a link inside", rlhf + ["--config", "test", f"--output_dir={r}",
                                                                          "--overwrite", f"--conala_path={r / 'data'}"],
            protect=[r])

    # resume state
    if want("state"):
        for name, (damage, extra) in STATE.items():
            run = copy(f"state-{len(name)}-{abs(hash(name)) % 10**6}")
            damage(run)
            ok = name == "checkpoint-ppo-² folder"  # a resume that succeeds rewrites its files: nothing to protect
            add("state", name, rlhf + ["--resume", str(run), *extra], protect=[] if ok else [run],
                expect="ok" if ok else "error")

    # script flags
    if want("flags"):
        r = copy("flags-ow")
        add("flags", "--overwrite=false on a run", rlhf + ["--config", "test", f"--output_dir={r}",
                                                           "--overwrite=false"], protect=[r])
        add("flags", "--resume= (empty)", rlhf + ["--resume="], cwd=tmp)
        add("flags", "--stages=eval,sft", rlhf + ["--config", "test", f"--output_dir={tmp / 'flags-order1'}",
                                                  "--stages=eval,sft"])
        add("flags", "--stages=sft,eval,reward,ppo", rlhf + ["--config", "test", f"--output_dir={tmp / 'flags-order2'}",
                                                             "--stages=sft,eval,reward,ppo"])

    # Unicode: a lone surrogate (valid JSON) in the data; raw U+2028/U+0085 in a predictions file
    if want("unicode"):
        good = {"intent": "sort a list", "rewritten_intent": None, "snippet": "sorted(l)", "question_id": 1}
        for name, (fname, key) in SURROGATE.items():
            recs = [dict(good, question_id=i) for i in range(40)]
            raw = json.dumps(recs).replace(json.dumps(good[key]), json.dumps(good[key])[:-1] + '\\ud800"', 1).encode()
            c = corpus(tmp, f"uni-{key}-{fname[7:11]}", *((raw, None) if "train" in fname else (None, raw)))
            add("unicode", f"lone surrogate in a {name}", rlhf + ["--config", "test", f"--conala_path={c}",
                                                                  f"--output_dir={tmp / f'uni-out-{len(name)}{key}'}"])
        pred = tmp / "uni-pred.jsonl"
        pred.write_text(json.dumps({"reference": "s = 'a\u2028b\u0085c'", "prediction": "s = 1"}, ensure_ascii=False)
                        + "\n", encoding="utf-8")
        add("unicode", "raw U+2028/U+0085 in PRED.jsonl", [py, str(root / "metrics.py"), str(pred), "--no-bertscore"],
            expect="ok")

    # paths and filesystems
    if want("paths"):
        long = "x" * 256
        for flag in ("--output_dir", "--conala_path", "--policy"):
            add("paths", f"{flag} with a 256-byte name", rlhf + ["--config", "test", f"{flag}={tmp / long}"]
                + ([f"--output_dir={tmp / 'paths-out'}"] if flag != "--output_dir" else []))
        add("paths", "--resume with a 256-byte name", rlhf + ["--resume", str(tmp / long)])
        add("paths", "diagnose.py, a 256-byte --conala_path", diag + [f"--conala_path={tmp / long}"])
        add("paths", "reward.py, a 256-byte --output_dir", reward + ["--config", "test", f"--output_dir={tmp / long}"])
        add("paths", "--output_dir not UTF-8", rlhf + ["--config", "test",
                                                       os.fsencode(f"--output_dir={tmp}/caf") + b"\xe9"])
        c = corpus(tmp, "paths-fifo")
        (c / "SHA256SUMS").unlink()
        os.mkfifo(c / "SHA256SUMS")
        add("paths", "diagnose.py, SHA256SUMS a FIFO", diag + [f"--conala_path={c}"])

    # locale: ASCII files and console (no ISO-8859-1 locale may be installed; ASCII fails the same way)
    if want("locale"):
        add("locale", "diagnose.py under an ASCII locale", diag + ["--config", "test"], expect="ok", env=ASCII_LOCALE)

    # absurd values inside the old domains
    if want("absurd"):
        for i, flags in enumerate(ABSURD):
            add("absurd", flags, rlhf + ["--config", "test", flags, f"--output_dir={tmp / f'absurd{i}'}"])

    # deeply nested code: tree-sitter recursed in C (exit 139)
    if want("nesting"):
        pred = tmp / "deep.jsonl"
        pred.write_text(json.dumps({"reference": "x = 1", "prediction": "(" * 20_000 + ")" * 20_000}) + "\n")
        add("nesting", "20,000 nested parentheses", [py, str(root / "metrics.py"), str(pred), "--no-bertscore"],
            expect="ok")


if __name__ == "__main__":  # a module of bench/bad_inputs.py, not a script
    import sys

    wants_help = "-h" in sys.argv or "--help" in sys.argv
    print("usage: python bench/bad_inputs.py [--only ...]  (bench/bad_inputs3.py holds its round-3 cases)" if wants_help
          else "error: bench/bad_inputs3.py is not a script; run python bench/bad_inputs.py", file=sys.stdout if
          wants_help else sys.stderr)
    raise SystemExit(0 if wants_help else 2)

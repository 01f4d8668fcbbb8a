"""The run folder on disk: who may write it (one lock), where it is (--output_dir, --overwrite,
unique default names), and how its files are written (UTF-8 always, JSONL split on \n only).

Why a separate module: rlhf.py and reward.py both own a run folder, and both must refuse the same
things before any work: a second writer, a folder that is not theirs, and inputs that live inside
the folder --overwrite would move. What a resume may trust is resume.py's; report.py turns the
folder's numbers into files for humans.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

from config import ConfigError


# ----------------------------------------------------------------------------- UTF-8 files
def write_text(path: str | Path, text: str) -> Path:
    """Every text file of a run is UTF-8 whatever the locale (under LC_ALL=en_US.ISO-8859-1 a plain
    write_text() fails on the first non-Latin-1 character, after the whole run)."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line one JSON object; a bad line is a one-line error naming the file and line (a kill
    mid-write can truncate the last one). Lines end at \\n only: json.dumps(ensure_ascii=False)
    keeps U+2028 and U+0085 raw inside strings, and str.splitlines() would cut a record there."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read it ({str(e)[:200]})") from None
    rows = []
    for i, ln in enumerate(lines, 1):
        if ln.strip():
            try:
                row = json.loads(ln)
            except (ValueError, RecursionError) as e:
                raise ConfigError(f"{path}: line {i} is not valid JSON ({str(e)[:100]}); "
                                  "fix or delete that line, then --resume again") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {i} is a JSON {type(row).__name__}, not an "
                                  "object; fix or delete that line, then --resume again")
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


# A disk that fills up, turns read-only or runs out of quota mid-run: rlhf.py prints these
# as one line.
DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


# ---------------------------------------------------------------------------- one writer per folder
# inode -> fd of every folder this process writes; held until the process exits
_HELD: dict[int, int] = {}


def lock(folder: Path) -> None:
    """An exclusive flock on the folder itself (its directory fd), for the life of the process: a
    second rlhf.py or reward.py on the same folder -- a second --resume, --overwrite of a live run
    -- is refused, naming the holder's pid. Locking the directory rather than a lock file writes
    nothing, so a refused command leaves the folder byte for byte as it was, and the lock follows
    the folder if it is renamed. The kernel drops it when the holder dies, so a killed run never
    leaves a stale lock."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    ino = os.fstat(fd).st_ino
    if ino in _HELD:
        os.close(fd)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConfigError(f"{folder}: cannot lock the run folder ({e.strerror})") from None
        pid = lock_holder(ino)
        raise ConfigError(f"{folder}: in use by another run "
                          f"({f'pid {pid}' if pid else 'pid unknown'}); wait "
                          "for it to finish or stop it, or choose another folder") from None
    _HELD[ino] = fd


def lock_holder(ino: int) -> int | None:
    """The pid holding a flock on inode `ino`, from /proc/locks (`1: FLOCK  ADVISORY  WRITE <pid>
    maj:min:ino ...`)."""
    try:
        for line in Path("/proc/locks").read_text().split("\n"):
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
                return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


# ------------------------------------------------------------------------ --output_dir, --overwrite
def prepare_output_dir(cfg, resume: str | None, overwrite: bool, script: str = "rlhf.py") -> Path:
    """Checked before any work: a file, an unwritable folder, a folder another run holds, or a
    non-empty folder without --resume/--overwrite is a one-line error. Nothing is ever deleted:
    --overwrite moves an old run aside to `<dir>.old-<time>`, and only a run folder (is_run_folder),
    never one that holds an input of this run. Returns the folder, locked for the life of this
    process (lock). Call it after the config and the data have loaded, so a bad input leaves the old
    folder where it was."""
    if resume:  # resume.check_resume then checks what it holds, under the lock
        out = need_config(resume).parent
        lock(out)
        return check_writable(out, "--resume")
    # outputs/<config>-<time>, made with an exclusive mkdir: two runs never share it
    if not cfg.output_dir:
        stem = (f"outputs/{'' if script == 'rlhf.py' else 'reward-'}{cfg.config_name}-"
                f"{time.strftime('%Y%m%d-%H%M%S')}")
        for i in range(1, 1000):
            out = Path(stem if i == 1 else f"{stem}-{i}")
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.mkdir()
                break
            except FileExistsError:
                continue
            except OSError as e:
                raise ConfigError(f"{out}: cannot create the run folder ({e.strerror})") from None
        lock(out)
        return check_writable(out, "--output_dir")
    out = Path(cfg.output_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--output_dir {out}: exists and is not a folder"
                          + (" (a symbolic link)" if out.is_symlink() else ""))
    if out.is_dir():
        lock(out)  # before looking inside: a live run's folder is never inspected, moved or written
        if any(out.iterdir()):
            if not overwrite:
                raise ConfigError(f"--output_dir {out}: folder is not empty; "
                                  f"use --resume {out} to continue it, "
                                  "--overwrite to replace it, or another --output_dir")
            refuse_protected(out, cfg)
            if not is_run_folder(out):
                raise ConfigError(f"--output_dir {out}: not a run folder of rlhf.py or reward.py "
                                  "(no config.json and argv.txt of ours), so --overwrite will not "
                                  "touch it; choose another --output_dir")
            move_aside(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output_dir {out}: cannot create it ({e.strerror})") from None
    lock(out)
    return check_writable(out, "--output_dir")


def has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def discard_if_unstarted(out: Path, state: dict, remove: bool) -> bool:
    """A new run that failed before its first stage finished (a model that would not load, a missing
    sandbox) holds only its config, argv and log: empty the folder, and remove it if this run made
    it, so that the same command can be retried instead of meeting "folder is not empty". Anything a
    stage finished or saved (a checkpoint) is kept, and so is the folder then."""
    import shutil

    if state.get("completed") or any(p.name.startswith("checkpoint") for p in out.iterdir()):
        return False
    for p in out.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if remove:
        with contextlib.suppress(OSError):
            out.rmdir()  # the lock is on the folder's fd: removing the folder is allowed
    return True


def check_writable(out: Path, flag: str) -> Path:
    if not os.access(out, os.W_OK | os.X_OK):  # also False on a read-only filesystem (EROFS)
        raise ConfigError(f"{flag} {out}: cannot write there "
                          "(read-only filesystem or no permission)")
    return out


def move_aside(out: Path) -> Path:
    trash = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    for i in range(2, 1000):
        if not trash.exists():
            break
        trash = out.with_name(f"{out.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{i}")
    try:
        os.replace(out, trash)  # a rename: the old run stays whole until the user deletes it
    except OSError as e:
        raise ConfigError(f"--output_dir {out}: cannot move the old run aside to {trash} "
                          f"({e.strerror})") from None
    print(f"overwrite: the old run in {out} was moved to {trash}; "
          "delete it when you no longer need it", file=sys.stderr, flush=True)
    return trash


def is_run_folder(folder: Path) -> bool:
    """A folder rlhf.py or reward.py made: each writes argv.txt (`rlhf.py ...`) and its config (a
    JSON object) first."""
    try:
        first = (folder / "argv.txt").read_text(encoding="utf-8").split(" ", 1)[0].strip()
        conf = folder / ("config.json" if first == "rlhf.py" else "rlhf_config.json")
        return first in ("rlhf.py", "reward.py") and \
            isinstance(json.loads(conf.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


INPUT_FIELDS = ("conala_path", "train_file", "test_file", "policy", "policy_model",
                "reward_encoder", "bertscore_model")


def refuse_protected(out: Path, cfg) -> None:
    """--overwrite may never move a folder that is, or holds, the repo, HOME, /, the working
    directory, or an input the config reads (e.g. --policy=<out>/checkpoint-sft). Each input is
    checked both as written and with its links resolved: --conala_path=<out>/data may be a symbolic
    link to a dataset elsewhere, and moving <out> aside would still take the link away from this
    run."""
    target, lexical = out.resolve(), Path(os.path.abspath(out))
    named = {"/": Path("/"), "HOME": Path.home(), "the working directory": Path.cwd(),
             "the repository": Path(__file__).resolve().parents[1]}
    for key in INPUT_FIELDS:
        value = getattr(cfg, key, "")
        if value and os.path.lexists(value):
            named[f"--{key}"] = Path(value)
    for what, path in named.items():
        for p, t in ((path.resolve(), target), (Path(os.path.abspath(path)), lexical)):
            if p == t or t in p.parents:
                raise ConfigError(f"--output_dir {out}: refusing --overwrite, the folder "
                                  f"{'is' if p == t else 'holds'} {what} ({path}); "
                                  "choose another --output_dir")


# ----------------------------------------------------------------------------- checkpoints by name
# redone if gone
STAGE_OUTPUT = {"sft": "checkpoint-sft", "reward": "checkpoint-reward", "ppo": "checkpoint-final"}
# ASCII digits only: '²'.isdigit() is True, int('²') fails
PPO_STEP = re.compile(r"checkpoint-ppo-([0-9]+)")


def ppo_checkpoints(out: Path) -> dict[int, Path]:
    """step -> checkpoint-ppo-<step>/ (names with other suffixes, e.g. checkpoint-ppo-nonfinite, are
    not steps)."""
    found = {}
    for p in out.glob("checkpoint-ppo-*"):
        m = PPO_STEP.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def need_config(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there; "
                          "is it an output folder of rlhf.py?")
    return path

"""The run folder on disk: who may write it (one lock), where it is (one path check, --overwrite), what a resume
may trust (one state validator), and how its files are written (UTF-8 always).

Why a separate module: rlhf.py and reward.py both own a run folder, and both must refuse the same things before
any work: a second writer, a folder that is not theirs, inputs that live inside the folder --overwrite would move,
and resume state that is damaged or of the wrong shape. report.py turns the folder's numbers into files for humans.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

import models
from config import ConfigError, load_config


# ----------------------------------------------------------------------------- UTF-8 files
def write_text(path: str | Path, text: str) -> Path:
    """Every text file of a run is UTF-8 whatever the locale (under LC_ALL=en_US.ISO-8859-1 a plain
    write_text() fails on the first non-Latin-1 character, after the whole run)."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """Every line one JSON object; a bad line is a one-line error naming the file and line (a kill mid-write can
    truncate the last one). Lines end at \\n only: json.dumps(ensure_ascii=False) keeps U+2028 and U+0085 raw
    inside strings, and str.splitlines() would cut a record there."""
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
                raise ConfigError(f"{path}: line {i} is not valid JSON ({str(e)[:100]}); fix or delete that line, "
                                  "then --resume again") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}: line {i} is a JSON {type(row).__name__}, not an object; fix or delete "
                                  "that line, then --resume again")
            rows.append(row)
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


# ----------------------------------------------------------------------------- one writer per folder
_HELD: dict[int, int] = {}  # inode -> fd of every folder this process writes; held until the process exits


def lock(folder: Path) -> None:
    """An exclusive flock on the folder itself (its directory fd), for the life of the process: a second rlhf.py
    or reward.py on the same folder -- a second --resume, --overwrite of a live run -- is refused, naming the
    holder's pid. Locking the directory rather than a lock file writes nothing, so a refused command leaves the
    folder byte for byte as it was, and the lock follows the folder if it is renamed. The kernel drops it when
    the holder dies, so a killed run never leaves a stale lock."""
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
        raise ConfigError(f"{folder}: in use by another run ({f'pid {pid}' if pid else 'pid unknown'}); wait "
                          "for it to finish or stop it, or choose another folder") from None
    _HELD[ino] = fd


def lock_holder(ino: int) -> int | None:
    """The pid holding a flock on inode `ino`, from /proc/locks (`1: FLOCK  ADVISORY  WRITE <pid> maj:min:ino ...`)."""
    try:
        for line in Path("/proc/locks").read_text().split("\n"):
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
                return int(parts[4])
    except (OSError, ValueError):
        pass
    return None


# ----------------------------------------------------------------------------- --output_dir, --overwrite
def prepare_output_dir(cfg, resume: str | None, overwrite: bool, script: str = "rlhf.py") -> Path:
    """Checked before any work: a file, an unwritable folder, a folder another run holds, or a non-empty folder
    without --resume/--overwrite is a one-line error. Nothing is ever deleted: --overwrite moves an old run aside
    to `<dir>.old-<time>`, and only a run folder (is_run_folder), never one that holds an input of this run.
    Returns the folder, locked for the life of this process (lock). Call it after the config and the data have
    loaded, so a bad input leaves the old folder where it was."""
    if resume:
        out = need_config(resume).parent
        lock(out)
        check_resume(out)
        return check_writable(out, "--resume")
    if not cfg.output_dir:  # outputs/<config>-<time>, made with an exclusive mkdir: two runs never share it
        stem = f"outputs/{'' if script == 'rlhf.py' else 'reward-'}{cfg.config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        raise ConfigError(f"--output_dir {out}: exists and is not a folder" + (" (a symbolic link)" if
                                                                                 out.is_symlink() else ""))
    if out.is_dir():
        lock(out)  # before looking inside: a live run's folder is never inspected, moved or written
        if any(out.iterdir()):
            if not overwrite:
                raise ConfigError(f"--output_dir {out}: folder is not empty; use --resume {out} to continue it, "
                                  "--overwrite to replace it, or another --output_dir")
            refuse_protected(out, cfg)
            if not is_run_folder(out):
                raise ConfigError(f"--output_dir {out}: not a run folder of rlhf.py or reward.py (no config.json "
                                  "and argv.txt of ours), so --overwrite will not touch it; choose another --output_dir")
            move_aside(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output_dir {out}: cannot create it ({e.strerror})") from None
    lock(out)
    return check_writable(out, "--output_dir")


def check_writable(out: Path, flag: str) -> Path:
    if not os.access(out, os.W_OK | os.X_OK):  # also False on a read-only filesystem (EROFS)
        raise ConfigError(f"{flag} {out}: cannot write there (read-only filesystem or no permission)")
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
        raise ConfigError(f"--output_dir {out}: cannot move the old run aside to {trash} ({e.strerror})") from None
    print(f"overwrite: the old run in {out} was moved to {trash}; delete it when you no longer need it",
          file=sys.stderr, flush=True)
    return trash


def is_run_folder(folder: Path) -> bool:
    """A folder rlhf.py or reward.py made: each writes argv.txt (`rlhf.py ...`) and its config (a JSON object) first."""
    try:
        first = (folder / "argv.txt").read_text(encoding="utf-8").split(" ", 1)[0].strip()
        conf = folder / ("config.json" if first == "rlhf.py" else "rlhf_config.json")
        return first in ("rlhf.py", "reward.py") and isinstance(json.loads(conf.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


INPUT_FIELDS = ("conala_path", "policy", "policy_model", "reward_encoder", "bertscore_model")


def refuse_protected(out: Path, cfg) -> None:
    """--overwrite may never move a folder that is, or holds, the repo, HOME, /, the working directory, or an
    input the config reads (e.g. --policy=<out>/checkpoint-sft). Each input is checked both as written and with
    its links resolved: --conala_path=<out>/data may be a symbolic link to a dataset elsewhere, and moving <out>
    aside would still take the link away from this run."""
    target, lexical = out.resolve(), Path(os.path.abspath(out))
    named = {"/": Path("/"), "HOME": Path.home(), "the working directory": Path.cwd(),
             "the repository": Path(__file__).resolve().parent}
    for key in INPUT_FIELDS:
        value = getattr(cfg, key, "")
        if value and os.path.lexists(value):
            named[f"--{key}"] = Path(value)
    for what, path in named.items():
        for p, t in ((path.resolve(), target), (Path(os.path.abspath(path)), lexical)):
            if p == t or t in p.parents:
                raise ConfigError(f"--output_dir {out}: refusing --overwrite, the folder "
                                  f"{'is' if p == t else 'holds'} {what} ({path}); choose another --output_dir")


# ----------------------------------------------------------------------------- resume checks
# What each checkpoint must hold for the stage that reloads it (file names from rlhf.py, ppo.py and reward.py;
# tests/test_resume.py checks they agree). Checked, with the state files, before a resumed run does any work.
CHECKPOINT_FILES = {"checkpoint-sft": ("config.json",), "checkpoint-reward": ("config.json", "reward_head.pt"),
                    "checkpoint-ppo-": ("config.json", "value_head.pt", "trainer_state.pt"),
                    "checkpoint-final": ("config.json", "value_head.pt")}
STAGE_OUTPUT = {"sft": "checkpoint-sft", "reward": "checkpoint-reward", "ppo": "checkpoint-final"}  # redone if gone
PPO_STEP = re.compile(r"checkpoint-ppo-([0-9]+)")  # ASCII digits only: '²'.isdigit() is True, int('²') fails
STATE_KEYS = {"completed": list, "stage_seconds": dict, "evaluated": dict}
PER_EXAMPLE_KEYS = ("gold", "codebleu", "chrf")  # evaluate.BOOTSTRAP_METRICS: what the paired bootstrap reads
FIX_STATE = ('fix it by hand ({"completed": [...], "stage_seconds": {}, "evaluated": {}} lists the finished '
             "stages), or start again in a new --output_dir")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_state(path: Path) -> dict:
    """state.json, checked for the shape Run writes; a truncated or foreign file is a one-line error."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: cannot read the run state ({str(e)[:120]}); {FIX_STATE}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(state).__name__}; {FIX_STATE}")
    for key, typ in STATE_KEYS.items():
        if not isinstance(state.get(key), typ):
            raise ConfigError(f"{path}: '{key}' must be a JSON {'list' if typ is list else 'object'}; {FIX_STATE}")
    if not all(isinstance(s, str) for s in state["completed"]):
        raise ConfigError(f"{path}: 'completed' must list stage names; {FIX_STATE}")
    if not all(_is_number(v) for v in state["stage_seconds"].values()):
        raise ConfigError(f"{path}: 'stage_seconds' must map stages to numbers; {FIX_STATE}")
    for name, entry in state["evaluated"].items():
        problem = evaluated_problem(entry)
        if problem:
            raise ConfigError(f"{path}: evaluated.{name} {problem}; delete that entry to evaluate {name} again")
    return state


def evaluated_problem(entry) -> str | None:
    """A cached evaluation is reused as is (evaluate.evaluate_system): it must hold what the report reads."""
    if not isinstance(entry, dict):
        return "must be an object"
    if "per_example" not in entry:
        return None  # not a cached result: evaluated again
    per = entry["per_example"]
    if not _is_number(entry.get("gold")) or not isinstance(per, dict):
        return "needs a number 'gold' and an object 'per_example'"
    lists = [per.get(k) for k in PER_EXAMPLE_KEYS]
    if not all(isinstance(v, list) and all(_is_number(x) for x in v) for v in lists) or len({len(v) for v in lists}) != 1:
        return f"per_example needs equal-length lists of numbers {', '.join(PER_EXAMPLE_KEYS)}"
    return None


def ppo_checkpoints(out: Path) -> dict[int, Path]:
    """step -> checkpoint-ppo-<step>/ (names with other suffixes, e.g. checkpoint-ppo-nonfinite, are not steps)."""
    found = {}
    for p in out.glob("checkpoint-ppo-*"):
        m = PPO_STEP.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def check_resume(run_dir: str | Path) -> Path:
    """Everything a resumed run will read, checked before it writes anything: config.json, state.json,
    metrics.jsonl rows, and the files of each checkpoint it may reload. Returns the run folder."""
    out = need_config(run_dir).parent
    load_config(out / "config.json")
    if (out / "state.json").exists():
        load_state(out / "state.json")
    if (out / "metrics.jsonl").exists():
        for i, row in enumerate(read_jsonl(out / "metrics.jsonl"), 1):
            if not isinstance(row.get("stage"), str) or not isinstance(row.get("step"), int):
                raise ConfigError(f"{out / 'metrics.jsonl'}: record {i} has no string 'stage' and integer 'step' "
                                  "(the report reads them); fix or delete that line, then --resume again")
    ppo = ppo_checkpoints(out)
    folders = [out / n for n in ("checkpoint-sft", "checkpoint-reward", "checkpoint-final")] + \
        ([ppo[max(ppo)]] if ppo else [])
    for folder in folders:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise ConfigError(f"{folder}: a {'symbolic link' if folder.is_symlink() else 'file'}, not a checkpoint "
                              "folder; move it out of the run folder, then --resume again")
        if folder.is_dir():
            check_checkpoint(folder)
    return out


def check_checkpoint(folder: Path) -> None:
    """The files a checkpoint needs are there and whole: a truncated safetensors or torch zip is caught from its
    header, without loading a tensor, and damaged bytes in a file of the right size from the checkpoint's
    SHA256SUMS (models.save_atomic writes it; one sha256 pass over the bytes, timed in the README)."""
    kind = "checkpoint-ppo-" if folder.name.startswith("checkpoint-ppo-") else folder.name
    advice = (f"move {folder.name}/ out of the run folder to resume from the previous checkpoint"
              if kind == "checkpoint-ppo-" else f"move {folder.name}/ out of the run folder and --resume with "
              "its stage in --stages to redo it")
    for name in CHECKPOINT_FILES.get(kind, ()):
        if not (folder / name).is_file():
            raise ConfigError(f"{folder / name}: missing, the checkpoint is incomplete; {advice}")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not (folder / "pytorch_model.bin").is_file():
        raise ConfigError(f"{folder}: no model weights (*.safetensors); the checkpoint is incomplete; {advice}")
    for path in weights + sorted(folder.glob("*.pt")) + sorted(folder.glob("*.bin")):
        problem = _safetensors_problem(path) if path.suffix == ".safetensors" else _torch_zip_problem(path)
        if problem:
            raise ConfigError(f"{path}: {problem}, the checkpoint is damaged; {advice}")
    problem = models.checksum_problem(folder)  # a whole-size file with damaged bytes passes the header checks
    if problem:
        raise ConfigError(f"{folder}: {problem}; {advice}")


def _safetensors_problem(path: Path) -> str | None:
    """safetensors layout: u64 little-endian header size, a JSON header, then the tensor bytes it indexes."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            size = path.stat().st_size
            if size < 8 or n > size - 8:
                return "truncated (header runs past the end of the file)"
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        return f"unreadable safetensors header ({str(e)[:80]})"
    return None if 8 + n + end <= size else f"truncated ({size} bytes, the header needs {8 + n + end})"


def _torch_zip_problem(path: Path) -> str | None:
    """torch.save writes a zip whose directory sits at the end, so a truncated file has none."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except (OSError, zipfile.BadZipFile) as e:
        return f"truncated or not a torch file ({str(e)[:80]})"
    return None


def need_config(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there; is it an output folder of rlhf.py?")
    return path

"""What a valid Config is: the domain each field declares beside itself with `knob(default,
domain)`, and the checks make_config runs (types, domains, memory caps, and the rules that tie
fields together).

Why a separate module: config.py declares its fields with these domains, so they sit below it, and
config.py then reads as knobs first. Nothing here imports config.py: a check returns its problem as
one line of text, and config.make_config raises it as a ConfigError.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

STAGES = ("sft", "reward", "ppo", "eval")
# Linux limits, in bytes: a longer name is ENAMETOOLONG only once the run writes
NAME_MAX, PATH_MAX = 255, 4096


def knob(default, domain) -> dataclasses.Field:
    """A Config field: its default, and the domain validation holds it to (in its metadata)."""
    return dataclasses.field(default=default, metadata={"domain": domain})


def domains(cfg) -> dict:
    """field -> its domain, for a Config class or instance (a field without knob(): KeyError)."""
    return {f.name: f.metadata["domain"] for f in dataclasses.fields(cfg)}


def type_of(f: dataclasses.Field) -> type:
    # `from __future__ import annotations` makes f.type a string; map it back to the builtin.
    return {"str": str, "int": int, "float": float, "bool": bool}[f.type]


# ----------------------------------------------------------------------------- domains
# validate() checks each field's domain and names the valid range in its error. Each domain can also
# produce values outside itself, so tests/test_config.py tries them on every field.
@dataclass(frozen=True)
class Range:
    """A number in [lo, hi] (open ends excluded); floats must also be finite (NaN and inf are never
    valid)."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def describe(self) -> str:
        if math.isinf(self.lo) and math.isinf(self.hi):
            return "a finite number"
        if math.isinf(self.hi):
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if math.isinf(self.lo):
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return (f"in {'(' if self.lo_open else '['}{_num(self.lo)}, "
                f"{_num(self.hi)}{')' if self.hi_open else ']'}")

    def problem(self, value) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}"
        ok = (self.lo < value if self.lo_open else self.lo <= value) and \
             (value < self.hi if self.hi_open else value <= self.hi)
        return None if ok else f"must be {self.describe()}"

    def bad_values(self, typ: type) -> list:
        bad = [float("nan"), float("inf"), float("-inf")] if typ is float else []
        if not math.isinf(self.lo):
            bad.append(typ(self.lo) if self.lo_open else typ(self.lo) - (1 if typ is int else 0.5))
        if not math.isinf(self.hi):
            bad.append(typ(self.hi) if self.hi_open else typ(self.hi) + (1 if typ is int else 0.5))
        return bad


class Choices:
    """One of a fixed set of values: `Choices("auto", "cpu")`."""

    def __init__(self, *options):
        self.options = options

    def describe(self) -> str:
        return f"valid choices are {', '.join(map(str, self.options))}"

    def problem(self, value) -> str | None:
        return None if value in self.options else self.describe()

    def bad_values(self, typ: type) -> list:
        return ["", "nope"] if typ is str else []


@dataclass(frozen=True)
class Text:
    """Free text (a path, a model spec); never a NUL byte (the OS refuses it in paths), empty only
    if allowed, and a path the filesystem can hold (path_problem)."""
    empty_ok: bool = True

    def describe(self) -> str:
        return (f"UTF-8 text without NUL bytes, each name at most {NAME_MAX} bytes"
                + ("" if self.empty_ok else ", not empty"))

    def problem(self, value) -> str | None:
        if "\0" in value or not (self.empty_ok or value.strip()):
            return f"must be {self.describe()}"
        problem = path_problem(value)
        return f"must be {self.describe()}: it {problem}" if problem else None

    def bad_values(self, typ: type) -> list:
        return ["a\0b", "x" * 256, "caf\udce9"] + ([] if self.empty_ok else ["", "  "])


def path_problem(value: str) -> str | None:
    """The one path check, for every path a script reads or writes (config paths, --resume): valid
    UTF-8 (a non-UTF-8 byte on the command line arrives as a lone surrogate, and every UTF-8 file
    naming the path would fail) and within the filesystem's name limits."""
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (a byte from another encoding?); rename it in UTF-8"
    long = next((c for c in raw.split(b"/") if len(c) > NAME_MAX), None)
    if long is not None:
        return f"has a name of {len(long)} bytes, over the filesystem's limit of {NAME_MAX}"
    if len(raw) > PATH_MAX:
        return f"is {len(raw)} bytes long, over the limit of {PATH_MAX}"
    return None


@dataclass(frozen=True)
class Stages:
    """A comma-separated subset of `names` (STAGES unless given), each at most once; non-empty
    unless empty_ok."""
    names: tuple = ()
    empty_ok: bool = False
    what: str = "stages"

    def describe(self) -> str:
        names = ", ".join(self.names or STAGES)
        return f"valid {self.what} are {names} (comma-separated, each once)"

    def problem(self, value) -> str | None:
        names = split_names(value)
        ok = (names or self.empty_ok) and all(s in (self.names or STAGES) for s in names) \
            and len(set(names)) == len(names)
        return None if ok else self.describe()

    def bad_values(self, typ: type) -> list:
        return ([] if self.empty_ok else ["", ","]) + ["sft,rl", "sft,sft"]


@dataclass(frozen=True)
class Flag:
    """A boolean: its type check is the whole domain."""

    def describe(self) -> str:
        return "true or false"

    def problem(self, value) -> str | None:
        return None

    def bad_values(self, typ: type) -> list:
        return []


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


def split_names(value: str) -> list[str]:
    """"a, b,," -> ["a", "b"]: the comma-separated lists of --stages and --eval_systems."""
    return [s.strip() for s in value.split(",") if s.strip()]


# The domains most fields share. Every open domain has a real upper bound, far above any preset:
# 1e39 overflows fp32 once squared or exponentiated, and a count of 2**30 allocates terabytes, but
# only after SFT has run.
BIG = 10**6
POSITIVE, NON_NEGATIVE = Range(0, BIG, lo_open=True), Range(0, BIG)
COUNT, LIMIT = Range(1, BIG), Range(0, BIG)
UNIT, LR = Range(0, 1), Range(0, 1, lo_open=True)
EVAL_SYSTEMS = Stages(("base", "sft", "sft-rs", "ppo"), empty_ok=True, what="systems")

# What one step holds at once: checked before SFT, not after it.
# research holds 512 sequences per step and at most 16 samples per intent
SEQUENCES, SAMPLES = 2**16, 2**10
MEMORY_CAPS = {"batch_size": SEQUENCES, "mini_batch_size": SEQUENCES, "micro_batch_size": SEQUENCES,
               "sft_batch_size": SEQUENCES, "sft_micro_batch_size": SEQUENCES,
               "eval_batch_size": SEQUENCES, "reward_batch_size": SEQUENCES,
               "samples_per_prompt": SAMPLES, "reward_policy_samples": SAMPLES, "bon_n": SAMPLES}


# ----------------------------------------------------------------------------- validation
def validate(cfg) -> str | None:
    """Types, then every field's domain (its knob), then the rules that tie fields together: the
    first problem as one line, or None."""
    return field_problem(cfg) or rule_problem(cfg)


def field_problem(cfg) -> str | None:
    """Each field on its own: its type, its domain, its memory cap, and that a named file exists."""
    for f in dataclasses.fields(cfg):
        value, typ = getattr(cfg, f.name), type_of(f)
        if isinstance(value, bool) and typ is not bool or \
                not isinstance(value, typ) and not (typ is float and isinstance(value, int)):
            return f"--{f.name}={value!r}: expected {typ.__name__}"
    for key, domain in domains(cfg).items():
        problem = domain.problem(getattr(cfg, key))
        if problem:
            return f"--{key}={_show(getattr(cfg, key))}: {problem}"
    for key, cap in MEMORY_CAPS.items():
        if getattr(cfg, key) > cap:
            return (f"--{key}={getattr(cfg, key)}: at most {cap} (config_checks.MEMORY_CAPS: {key} "
                    "sequences are held in memory at once)")
    for key in ("train_file", "test_file"):  # a typo fails here, not after the run folder exists
        if getattr(cfg, key) and not Path(getattr(cfg, key)).is_file():
            return f"--{key}={getattr(cfg, key)}: no such file"
    return None


def rule_problem(cfg) -> str | None:
    """The rules that tie fields together."""
    stages = split_names(cfg.stages)
    order = [s for s in STAGES if s in stages]
    if stages != order:  # each stage reads the previous one's checkpoint
        return (f"--stages={cfg.stages}: stages run in pipeline order ({', '.join(STAGES)}); "
                f"write --stages={','.join(order)}")
    if "ppo" in stages and not cfg.do_sample:
        return ("--do_sample=False cannot be used with PPO: PPO learns from the variation "
                "between sampled responses; greedy rollouts give identical responses, no "
                "exploration and no useful advantage signal")
    if cfg.batch_size % cfg.mini_batch_size or cfg.mini_batch_size % cfg.micro_batch_size:
        return ("batch_size must be a multiple of mini_batch_size, and mini_batch_size of "
                "micro_batch_size")
    if cfg.sft_batch_size % cfg.sft_micro_batch_size:
        return "sft_batch_size must be a multiple of sft_micro_batch_size"
    if cfg.batch_size % cfg.samples_per_prompt:
        return (f"--batch_size={cfg.batch_size} must be a multiple of --samples_per_prompt="
                f"{cfg.samples_per_prompt} (batch_size counts responses: prompts x samples)")
    if cfg.advantage != "gae" and cfg.samples_per_prompt < 2:
        return (f"--advantage={cfg.advantage} needs --samples_per_prompt >= 2: its baseline is the "
                "other samples of the same prompt")
    if cfg.advantage_norm in ("batch", "group") and cfg.advantage == "gae":
        return (f"--advantage_norm={cfg.advantage_norm} normalises sequence advantages of a group "
                "baseline; GAE's are per token: use token or none (or --advantage=rloo/grpo)")
    if cfg.sharpen_temperatures:
        if not all(_is_positive_float(t) for t in split_names(cfg.sharpen_temperatures)):
            return (f"--sharpen_temperatures={cfg.sharpen_temperatures!r}: expected "
                    "comma-separated temperatures > 0, e.g. 0.2,0.4,0.6,0.8")
        if not cfg.eval_samples:
            return "--sharpen_temperatures needs --eval_samples > 0 (it compares sampled gold)"
    if cfg.reward_clip_min >= cfg.reward_clip_max:
        return (f"--reward_clip_min={cfg.reward_clip_min} must be < "
                f"--reward_clip_max={cfg.reward_clip_max}")
    weights = ("w_rm", "w_syntax", "w_exec", "w_similarity", "w_quality")
    if "ppo" in stages and not any(getattr(cfg, w) for w in weights):
        return f"{', '.join(weights)} are all 0: PPO would optimise a constant reward; set one > 0"
    return None


def _is_positive_float(text: str) -> bool:
    try:
        return 0 < float(text) < float("inf")
    except ValueError:
        return False


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)

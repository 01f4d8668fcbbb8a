"""`--help` for rlhf.py and diagnose.py: the presets, the script's own flags, and every Config field with its value
and its one-line comment from config.py, grouped by stage.

Why a separate module: the comments in config.py are the documentation of every knob (STYLE.md: a one-line comment
on every Config field), so the help reads them from the source instead of keeping a second copy that drifts.
config.py imports this only when --help is given, so `import config` stays instant.
"""
from __future__ import annotations

import argparse
import inspect
import io
import re
import sys
import tokenize
from pathlib import Path

import config

GROUPS = ("general", "sft", "reward", "ppo", "eval")  # pipeline order; "general" is run, data, models, decoding
FLAG_HELP = {  # the scripts' own flags (not Config fields)
    "resume": "continue the run in DIR with its saved config.json; --key=value may extend it (more --ppo_steps) "
              "or change what is still to come, never a finished stage",
    "overwrite": "move a non-empty --output_dir run aside to <dir>.old-<time> and start again (nothing is deleted)",
    "diagnose": "run diagnose.py's checks first and stop on a failure",
    "debug": "show the full traceback of an error instead of one line",
    "deep": "also load the policy and encoder models (slower)",
}


PREFIX_GROUP = {"sft": "sft", "reward": "reward", "eval": "eval"}  # a field's prefix names its stage outright


def group_of(section: str) -> str:
    """A Config section comment (`# --- PPO (...) ---`) -> the stage that reads its fields."""
    s = section.lower()
    for group, words in (("sft", ("sft",)), ("reward", ("reward", "feedback")), ("ppo", ("ppo",)),
                         ("eval", ("eval",))):
        if any(w in s for w in words):
            return group
    return "general"


def field_docs() -> dict[str, tuple[str, str]]:
    """field -> (group, comment), read from the source of Config with tokenize, so a '#' inside a string default
    is not a comment. A comment alone on its line opens a section; one after a field is that field's doc."""
    docs, group, field_at = {}, "general", {}
    source = inspect.getsource(config.Config)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.line.strip().split(":")[0] == tok.string:
            field_at[tok.start[0]] = tok.string  # a field definition: `    name: type = default`
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if tok.start[0] in field_at:
                name = field_at[tok.start[0]]
                docs[name] = (PREFIX_GROUP.get(name.split("_")[0], group), text)
            elif text.startswith("---"):
                group = group_of(text.strip("- "))
    return docs


def flag_names(extra_flags: tuple[str, ...]) -> list[str]:
    return [f.rstrip("=") for f in extra_flags if f.rstrip("=") in FLAG_HELP]


def help_text(prog: str, extra_flags: tuple[str, ...] = (), preset: str = "quick", about: str = "") -> str:
    """The whole help page; option values are those of `preset` (what `--config preset` runs)."""
    preset = preset if preset in config.PRESETS else "quick"
    cfg = config.make_config(preset)
    flags = flag_names(extra_flags)
    lines = [f"usage: python {prog} [--config NAME] [--key=value ...]"
             + "".join(f" [--{f}{' DIR' if f + '=' in extra_flags else ''}]" for f in flags)]
    if about:
        lines += ["", about]
    lines += ["", "presets (--config NAME; without it: quick):"]
    width = max(map(len, config.PRESETS))
    for name in config.PRESETS:
        what, time = config.PRESET_NOTES[name]
        lines.append(f"  {name:<{width}}  {what} ({time})")
    if flags:
        label = {f: f"--{f}" + (" DIR" if f + "=" in extra_flags else "") for f in flags}
        lines += ["", "flags:"] + [f"  {label[f]:<14} {FLAG_HELP[f]}" for f in flags]
    lines += ["", f"options (--key=value or --key value), with the {preset} preset's values "
                  "(`--config NAME --help` shows another's), by stage:"]
    docs = field_docs()
    for group in GROUPS:
        names = [k for k, (g, _) in docs.items() if g == group and k != "config_name"]
        lines.append(f"\n {group}:")
        for k in names:
            value = getattr(cfg, k)
            shown = f'"{value}"' if value == "" else str(value)
            lines.append(f"  --{k}={shown}".ljust(34) + " " + docs[k][1])
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the bench scripts
class ArgumentParser(argparse.ArgumentParser):
    """argparse, with STYLE.md §8's errors: one line and exit 2 (argparse prints its whole usage block first)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (--help for usage)\n")


def usage_line(doc: str) -> str:
    """`usage: python bench/x.py ARGS` from the first `python bench/...` line of a script's docstring."""
    found = re.search(r"python (bench/\S+\.py[^\n]*)", doc)
    return f"usage: python {found.group(1).strip()}" if found else "usage: see the docstring"


def bench_main(main, doc: str, n_args: int = 1, argv: list[str] | None = None):
    """Entry point of a bench script with positional arguments: --help prints usage and docstring (exit 0); a
    missing argument, or an input that cannot be read or parsed, is one line and exit 2 (--debug: traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    prog = Path(sys.argv[0]).name
    if "-h" in argv or "--help" in argv:
        print(usage_line(doc) + "\n\n" + doc.strip())
        raise SystemExit(0)
    if len([a for a in argv if not a.startswith("--")]) < n_args:
        raise SystemExit(f"error: {prog}: missing argument; {usage_line(doc)} (--help for more)")
    try:
        raise SystemExit(main(argv))
    except (config.ConfigError, OSError, ValueError, KeyError) as e:
        if "--debug" in argv:
            raise
        text = str(e).splitlines()[0] if str(e) else ""
        raise SystemExit(f"error: {prog}: {type(e).__name__ + ': ' if not isinstance(e, config.ConfigError) else ''}"
                         f"{text}") from None

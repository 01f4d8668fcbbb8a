"""`--help` for rlhf.py and diagnose.py: the presets, the script's own flags, and every Config field
with its value and its comment from config.py, grouped by stage; and the bench scripts' parser.

Why a separate module: the comments in config.py are the documentation of every knob (STYLE.md: a
one-line comment on every Config field), so the help reads them from the source instead of keeping
a second copy that drifts. config_cli.py imports this only when --help is given, so parsing a
command line stays instant.
"""
from __future__ import annotations

import argparse
import inspect
import io
import re
import sys
import textwrap
import tokenize
from pathlib import Path

import config

# pipeline order; "general" is run, data, models, decoding
GROUPS = ("general", "sft", "reward", "ppo", "eval")
FLAG_HELP = {  # the scripts' own flags (not Config fields)
    "resume": "continue the run in DIR with its saved config.json; --key=value may extend it "
              "(more --ppo_steps) or change what is still to come, never a finished stage",
    "overwrite": "move a non-empty --output_dir run aside to <dir>.old-<time> and start again "
                 "(nothing is deleted)",
    "diagnose": "run diagnose.py's checks first and stop on a failure",
    "debug": "show the full traceback of an error instead of one line",
    "deep": "also load the policy and encoder models (slower)",
}


PREFIX_GROUP = {"sft": "sft", "reward": "reward", "eval": "eval"}  # a prefix names its stage
HELP_WIDTH = 100  # a field's comment goes on past its option line, wrapped to this width


def group_of(section: str) -> str:
    """A Config section comment (`# --- PPO (...) ---`) -> the stage that reads its fields."""
    s = section.lower()
    for group, words in (("sft", ("sft",)), ("reward", ("reward", "feedback")), ("ppo", ("ppo",)),
                         ("eval", ("eval",))):
        if any(w in s for w in words):
            return group
    return "general"


def field_docs() -> dict[str, tuple[str, list[str]]]:
    """field -> (group, its comment's lines), read from the source of Config with tokenize, so a '#'
    inside a string default is not a comment. The comment after a field is that field's doc, and
    `#   ` lines right under it continue it; a `# --- name ---` line opens a section; any other
    comment alone on its line is for the reader of config.py only."""
    docs, group, field_at, last = {}, "general", {}, None
    source = inspect.getsource(config.Config)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        row, text = tok.start[0], tok.string.lstrip("#").strip()
        if tok.type == tokenize.NAME and tok.start[1] == 4 and \
                tok.line.strip().split(":")[0] == tok.string:
            field_at[row] = tok.string  # a field definition: `    name: type = knob(...)`
        elif tok.type == tokenize.COMMENT and row in field_at:
            name = field_at[row]
            docs[name], last = (PREFIX_GROUP.get(name.split("_")[0], group), [text]), (name, row)
        elif tok.type == tokenize.COMMENT and last and row == last[1] + 1 and \
                tok.string.startswith("#   "):
            docs[last[0]][1].append(text)
            last = (last[0], row)
        elif tok.type == tokenize.COMMENT and text.startswith("---"):
            group = group_of(text.strip("- "))
    return docs


def flag_names(extra_flags: tuple[str, ...]) -> list[str]:
    return [f.rstrip("=") for f in extra_flags if f.rstrip("=") in FLAG_HELP]


def help_text(prog: str, extra_flags: tuple[str, ...] = (), preset: str = "quick",
              about: str = "") -> str:
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
            first, *rest = docs[k][1]
            lines.append(f"  --{k}={shown}".ljust(34) + " " + first)
            lines += textwrap.wrap(" ".join(rest), HELP_WIDTH, initial_indent=" " * 35,
                                   subsequent_indent=" " * 35, break_long_words=False,
                                   break_on_hyphens=False)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the bench scripts
class ArgumentParser(argparse.ArgumentParser):
    """argparse, with STYLE.md §8's errors: one line and exit 2 (argparse prints its whole usage
    block first)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (--help for usage)\n")


def usage_line(doc: str) -> str:
    """`usage: python bench/x.py ARGS` from the first `python bench/...` line of a script's
    docstring."""
    found = re.search(r"python (bench/\S+\.py[^\n]*)", doc)
    return f"usage: python {found.group(1).strip()}" if found else "usage: see the docstring"


def bench_main(main, doc: str, n_args: int = 1, argv: list[str] | None = None):
    """Entry point of a bench script with positional arguments: --help prints usage and docstring
    (exit 0); a missing argument, or an input that cannot be read or parsed, is one line and exit 2
    (--debug: traceback)."""
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
        kind = "" if isinstance(e, config.ConfigError) else type(e).__name__ + ": "
        raise SystemExit(f"error: {prog}: {kind}{text}") from None

"""The command line of rlhf.py, diagnose.py and reward.py: `--config NAME --key=value ...` -> a
validated Config, plus each script's own flags (--resume DIR, --overwrite, --debug, ...).

Why a separate module: parsing needs the presets and make_config, so it sits above config.py, which
then reads as knobs first. An unknown option is an error that names the valid ones; a value is
type-checked by make_config; -h/--help prints cli_help.py's page.
"""
from __future__ import annotations

import sys
from pathlib import Path

from config import (PRESETS, Config, ConfigError, field_types, load_config, make_config,
                    parse_value, to_dict)
from plumbing.config_checks import path_problem


def parse_cli(argv: list[str], extra_flags: tuple[str, ...] = (), prog: str = "rlhf.py",
              about: str = "") -> tuple[Config, dict]:
    """`--config NAME --key=value ...` -> (Config, {flag: value} for the script's own extra flags).

    Extra flags (e.g. --resume DIR, --overwrite, --diagnose, --debug) belong to the calling script;
    a bare extra flag without a value is True. -h/--help prints the help page (cli_help.py) and
    exits 0.
    """
    if "-h" in argv or "--help" in argv:
        from plumbing import cli_help  # only for --help: importing this module stays instant

        print(cli_help.help_text(prog, extra_flags, preset=preset_in(argv) or "quick", about=about))
        raise SystemExit(0)
    preset, overrides, extras = "quick", {}, {}
    types = field_types()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config NAME and --key=value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        takes_value = key == "config" or key in types or extras_takes_value(key, extra_flags)
        if not eq and takes_value:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                if key in types and types[key] is bool:
                    val = "true"  # bare --do_sample means True
                else:
                    raise ConfigError(f"--{key} needs a value")
            else:
                i, val = i + 1, argv[i + 1]
        if key == "config":
            preset = val
        elif key == "config_name":  # the run's label: the preset it started from (relabelling lies)
            raise ConfigError("--config_name is not an option: it records the preset the run "
                              f"started from; use --config NAME (valid: {', '.join(PRESETS)})")
        elif key in types:
            overrides[key] = val
        elif key in [f.rstrip("=") for f in extra_flags]:
            extras[key] = _extra_value(key, val, takes_value) if (eq or takes_value) else True
        else:
            valid = ", ".join(["config"] + [f.rstrip("=") for f in extra_flags]
                              + [k for k in types if k != "config_name"])
            raise ConfigError(f"unknown option --{key}; valid options: {valid}")
        i += 1
    return _resolve(preset, overrides, extras, argv)


def _resolve(preset: str, overrides: dict, extras: dict, argv: list[str]) -> tuple[Config, dict]:
    """The Config a parsed command line asks for: the preset's, or with --resume the saved one's."""
    if extras.get("resume") and preset_in(argv):
        raise ConfigError(f"--config {preset_in(argv)} with --resume: a resumed run keeps the "
                          "preset and settings in its config.json; drop --config (or start a new "
                          "run without --resume)")
    if extras.get("resume") and isinstance(extras["resume"], str):
        # A resumed run keeps its saved config, with this command line's overrides on top. Checking
        # them against the default preset first would refuse e.g. `--resume DIR --advantage=grpo`
        # (quick has k = 1).
        path = Path(extras["resume"]) / "config.json"
        if not path.is_file():
            raise ConfigError(f"--resume {extras['resume']}: no config.json there; is it an output "
                              "folder of rlhf.py?")
        saved = load_config(path)
        return make_config(saved.config_name, {**to_dict(saved), **overrides}), extras
    return make_config(preset, overrides), extras


def preset_in(argv: list[str]) -> str | None:
    """The NAME of `--config NAME` / `--config=NAME` on a command line, or None."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _extra_value(key: str, val: str, takes_value: bool):
    """A script flag's value: a path is checked like the config's paths (--resume= is not "no
    resume"), and a boolean flag's value is parsed (--overwrite=false must not overwrite)."""
    if not takes_value:
        return parse_value(key, val, bool)
    problem = "needs a value" if not val.strip() else path_problem(val)
    if problem:
        raise ConfigError(f"--{key}={val!r}: {problem}")
    return val


def extras_takes_value(key: str, extra_flags: tuple[str, ...]) -> bool:
    """Extra flags written with a trailing '=' in `extra_flags` (e.g. 'resume=') take a value."""
    return f"{key}=" in extra_flags


def explicit_overrides(argv: list[str]) -> dict[str, str]:
    """The raw --key=value / --key value overrides on a command line (so --resume can re-apply
    them)."""
    types, found = field_types(), {}
    for i, arg in enumerate(argv):
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if arg.startswith("--") and key in types:
            bare = not eq and (i + 1 >= len(argv) or argv[i + 1].startswith("--"))
            found[key] = val if eq else "true" if bare else argv[i + 1]
    return found


def console_fallback() -> None:
    """Print under any locale: under LC_ALL=en_US.ISO-8859-1 the first ✅ would raise
    UnicodeEncodeError, so a character the console cannot show is printed as an escape instead
    (files stay UTF-8 whatever the locale)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

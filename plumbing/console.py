"""What the person at the terminal sees and sends: the console's copy in training.log, progress
bars, and the stop signals (Ctrl-C, SIGTERM, SIGHUP) that every long loop of the pipeline answers.

How a stop travels: the first signal only sets run.stop_requested. Long loops poll it between
batches (their `stop` argument, usually run.stopping) and raise Interrupted; loops every rank runs
ask all ranks at once (dist.any_flag), so under torchrun they stop together. Each stage adds what
--resume will do (on_interrupt): SFT and the reward stage start over (nothing partial of theirs is
ever read), PPO continues from its last checkpoint (drawing a curve point the stop skipped),
evaluation keeps every system it had fully scored. rlhf.py prints it and exits 128 + the signal's
number. A second signal exits at once (abort_now).
Why a separate module: report.py keeps the run folder and the report; callers import these names
from here.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path


# -------------------------------------------------------------------------- the console and its log
# cursor moves: tqdm's nested bars go up a line to redraw
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Tee:
    """Send console output to the terminal and to training.log (the full console output). The
    terminal gets every byte; the log gets lines as the terminal finally shows them. A progress bar
    redraws its line with carriage returns about ten times a second, so a log of raw frames was
    mostly CR noise (44 KB for a seconds-long run): each line is kept as the text after its last
    carriage return, the bar's final state."""

    def __init__(self, stream, path: Path):
        self.stream, self.file, self.pending = stream, open(path, "a", encoding="utf-8"), ""

    def write(self, text):
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            # the terminal hung up (SIGHUP): the run goes on, and so does its log
            pass
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            line = final_frame(line)
            if line.strip():
                self.file.write(line + "\n")
        self.file.flush()
        return len(text)

    def flush(self):
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def isatty(self):
        return self.stream.isatty()


def final_frame(line: str) -> str:
    """What a terminal shows of a line written with carriage returns: the last non-blank redraw (a
    bar that clears itself writes spaces last), without ANSI cursor moves."""
    frames = [f for f in _ANSI.sub("", line).split("\r") if f.strip()]
    return frames[-1].rstrip() if frames else ""


def progress(items, **kw):
    """tqdm over `items` on rank 0 only (every rank drawing its own bar was N bars fighting over one
    terminal)."""
    from plumbing import dist
    from tqdm import tqdm

    return tqdm(items, dynamic_ncols=True, disable=not dist.is_main(), **kw)


# ----------------------------------------------------------------------------- stop signals
class Interrupted(Exception):
    """Raised once a stop signal was seen, at the next batch or step boundary, after what resume
    needs is saved."""


@contextlib.contextmanager
def on_interrupt(resume_note: str):
    """Adds to an Interrupted raised inside what --resume will do about it (each stage says:
    continue or redo). A `with` block or a decorator (@on_interrupt("...") on a stage function)."""
    try:
        yield
    except Interrupted as e:
        raise Interrupted(f"{e}; {resume_note}") from None


def rank0_section(fn):
    """fn() on rank 0 only (sandboxed labelling, scoring), its result broadcast to every rank. An
    Interrupted on rank 0 is broadcast too and raised everywhere, so all ranks leave at the same
    point instead of the others waiting in a collective rank 0 never reaches."""
    from plumbing import dist

    out = None
    if dist.is_main():
        try:
            out = fn()
        except Interrupted as e:
            out = e
    out = dist.broadcast_object(out)
    if isinstance(out, Interrupted):
        raise out
    return out


# What `timeout`, `docker stop`, Slurm (before its kill) and systemd send, and a closed terminal:
# all mean Ctrl-C.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# torchrun forwards a terminal's SIGINT to workers that already got it: one Ctrl-C, two signals
TORCHRUN_ECHO_S = 2.0


def install_sigint(run) -> None:
    """First Ctrl-C, SIGTERM or SIGHUP: every long loop stops at its next batch or step boundary,
    the stage keeps what --resume can trust, and the run exits 128 + the signal's number (130 for
    Ctrl-C). A second one: exit at once (abort_now). Under torchrun the ranks agree at each step's
    end (Run.agree_stop), so a signal on any rank stops them all. A signal the parent set to be
    ignored (nohup's SIGHUP, `cmd &` in a script) stays ignored."""
    # dist.env_world_size(), read once, outside the handler
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1

    def handler(signum, frame):
        if run.stop_requested:
            # torchrun forwards the terminal's SIGINT to workers that already got it, so under
            # torchrun one Ctrl-C arrives twice within milliseconds; only a later one means
            # "stop at once".
            if under_torchrun and time.monotonic() - run.first_sigint < TORCHRUN_ECHO_S:
                return
            abort_now(signum)
        run.stop_requested, run.first_sigint, run.stop_signal = True, time.monotonic(), signum
        if os.environ.get("RANK", "0") == "0":  # one line, not one per rank
            say(f"\ninterrupt ({signal.Signals(signum).name}): finishing the current batch or "
                "step, then saving (send it again to abort at once)")

    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, handler)


def say(line: str) -> None:
    """One line to stderr from a signal handler; a hung-up terminal (SIGHUP) must not raise inside
    the run."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def abort_now(signum: int) -> None:
    """The second signal: one line, exit 128 + signum now. os._exit, not KeyboardInterrupt:
    unwinding through transformers' generate printed a ~110-line traceback, and `finally` blocks (a
    sandbox pool joining its snippets) made "at once" take seconds. Nothing is left half-trusted:
    checkpoints and state.json are renamed into place whole, training.log is flushed per write, and
    bwrap's --die-with-parent ends running snippets."""
    try:
        if os.environ.get("RANK", "0") == "0":
            say(f"\naborted ({signal.Signals(signum).name} again): exiting now; "
                "--resume continues from the last saved checkpoint")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    finally:
        os._exit(128 + signum)

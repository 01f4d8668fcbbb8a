"""The rule signals, each in [0, 1]: does the code parse (syntax), how did it run in the sandbox
(exec), how close is it to the reference (similarity: chrF), and is it well-formed output (quality).

The synthetic annotator (feedback.py) weighs them into its score, the "gold" of the evaluation; the
PPO reward (reward.make_score_fn) may add them, weighted, to the reward model's score.
"""
from __future__ import annotations

import ast
import re

import sandbox

# Execution outcome -> signal. name_error is 0.5, not 0: CoNaLa references are fragments over free
# variables (`mylist.sort()`), so "ran until it needed an undefined input" is no evidence either
# way.
# too_large (code over sandbox.MAX_CODE_CHARS, never run) is 0: a policy must not learn to pad its
# way out of a test.
# unkillable (a task outlived its kill by the grace period, e.g. in uninterruptible I/O) is 0 for
# the same reason.
EXEC_SCORE = {"ok": 1.0, "name_error": 0.5, "runtime_error": 0.25, "timeout": 0.0, "killed": 0.0,
              "syntax_error": 0.0, "too_large": 0.0, "unkillable": 0.0}
# a markdown fence is wrong output format, but the code inside may still be right
FENCE_PENALTY = 0.5
PROSE_PENALTY = 0.5  # same for an English sentence after the code
# 3+ plain words: no brackets or operators
_PROSE = re.compile(r"[A-Za-z][\w'`,-]*(?: [\w'`,-]+){2,}[.:!?]?")


def syntax_signal(code: str) -> float:
    """1 if Python's own `ast` parses the code, else 0. We use `ast` rather than tree-sitter because
    it is the grammar of the interpreter that will run the code, and needs no extra package. Blank
    code is 0."""
    # the cap bounds the parse's time and memory
    if not code.strip() or len(code) > sandbox.MAX_CODE_CHARS:
        return 0.0
    try:
        ast.parse(code, filename=sandbox.SNIPPET_FILENAME)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0.0
    return 1.0


def exec_signal(outcome: str) -> float:
    if outcome not in EXEC_SCORE:
        raise ValueError(f"unknown execution outcome {outcome!r}; valid: {', '.join(EXEC_SCORE)}")
    return EXEC_SCORE[outcome]


def similarity_signal(code: str, reference: str) -> float:
    """chrF (Popović 2015) of the code against the reference, in [0, 1].

    Character n-grams, not CodeBLEU: CoNaLa code is often unspaced (`x[::-1]`, `f(a,b)`), and
    whitespace- tokenised n-gram metrics then compare one giant token. chrF also needs nothing from
    metrics.py."""
    import sacrebleu  # lazy: keeps `import rules` instant

    if not code.strip():
        return 0.0
    return sacrebleu.sentence_chrf(code, [reference]).score / 100.0


def _is_prose(line: str) -> bool:
    """An English sentence: three or more plain words that do not parse, even as a block opener
    (`for x in y:`)."""
    s = line.strip()
    if not _PROSE.fullmatch(s):
        return False
    return syntax_signal(s) == 0.0 and syntax_signal(s + "\n    pass") == 0.0


def quality_signal(code: str, reference: str) -> float:
    """length ratio to the reference (min/max, in characters) x share of unique non-empty lines,
    halved for a markdown fence and halved for a line of prose. Blank code is 0."""
    text, ref = code.strip(), reference.strip()
    if not text:
        return 0.0
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    score = min(len(text), len(ref)) / max(len(text), len(ref))
    score *= len(set(lines)) / len(lines)
    if "```" in text:
        score *= FENCE_PENALTY
    if any(_is_prose(ln) for ln in lines):
        score *= PROSE_PENALTY
    return score


def rule_signals(code: str, reference: str, exec_outcome: str | None = None) -> dict[str, float]:
    """{syntax, similarity, quality} and, when `exec_outcome` is given, exec. Without an outcome (no
    sandbox) there is no 'exec' key at all rather than a made-up 0: reward.combined_reward then
    refuses w_exec > 0. Blank code answers nothing: 0 on every signal (it would parse, and run "ok",
    so score ~0.1 as gold)."""
    if not code.strip():
        return dict(syntax=0.0, similarity=0.0, quality=0.0,
                    **({} if exec_outcome is None else {"exec": 0.0}))
    out = {"syntax": syntax_signal(code), "similarity": similarity_signal(code, reference),
           "quality": quality_signal(code, reference)}
    if exec_outcome is not None:
        out["exec"] = exec_signal(exec_outcome)
    return out

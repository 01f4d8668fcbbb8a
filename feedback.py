"""Synthetic human feedback (the seed's "evaluation_results_server"): corrupted candidates, a
synthetic annotator that sees the reference and weighs the rule signals (rules.py), and preference
pairs written as auditable JSONL.

Pipeline per intent: build_candidates -> annotate (rule signals, sandboxed execution) ->
preference_pairs. The annotator may read the reference; the reward model trained on its pairs never
does (reward.py).
"""
from __future__ import annotations

import ast
import builtins
import functools
import io
import keyword
import random
import tokenize
from collections import Counter

import sandbox
from rules import exec_signal, rule_signals, syntax_signal


# ----------------------------------------------------------------------------- corruptions
# Each takes (code, rng) and returns a corrupted string, or None when it does not apply to this
# snippet.
def _tokens(code: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(code).readline))


def _offset(code: str, row: int, col: int) -> int:
    """(1-based row, character column) -> index into `code`."""
    return sum(len(ln) + 1 for ln in code.split("\n")[: row - 1]) + col


def corrupt_syntax(code: str, rng: random.Random) -> str | None:
    """Delete one closing bracket (or, with none, leave a trailing operator); the result must fail
    to parse."""
    try:
        closers = [t for t in _tokens(code) if t.type == tokenize.OP and t.string in ")]}"]
    except (tokenize.TokenError, SyntaxError):
        return None
    if closers:
        t = rng.choice(closers)
        i = _offset(code, *t.start)
        out = code[:i] + code[i + 1:]
    else:
        out = code.rstrip() + " +"
    return out if syntax_signal(out) == 0.0 else None


@functools.lru_cache(maxsize=1)
def known_names() -> frozenset:
    """Names that exist in builtins, the core types and the stdlib modules CoNaLa uses most: a
    renamed API must not land on one of these, or it would not be broken."""
    import datetime
    import importlib

    modules = ("collections", "datetime", "itertools", "json", "math", "os", "os.path", "random",
               "re", "string", "sys", "time")
    spaces = [builtins, str, bytes, list, dict, set, tuple, int, float, datetime.datetime]
    spaces += [importlib.import_module(m) for m in modules]
    return frozenset(name for space in spaces for name in dir(space)) | frozenset(keyword.kwlist)


def _near_miss(name: str) -> str | None:
    """A plausible but non-existent API name: `read_csv` -> `readcsv`, `join` -> `joins`, else
    `<name>_all`."""
    for cand in (name.replace("_", ""), name + "s", name + "_all"):
        if cand != name and cand.isidentifier() and cand not in known_names():
            return cand
    return None


def corrupt_rename_api(code: str, rng: random.Random) -> str | None:
    """Rename one called function or method (a NAME token right before `(`) to a near miss."""
    try:
        toks = _tokens(code)
    except (tokenize.TokenError, SyntaxError):
        return None
    calls = [a for a, b in zip(toks, toks[1:])
             if a.type == tokenize.NAME and not keyword.iskeyword(a.string)
             and b.string == "(" and _near_miss(a.string)]
    if not calls:
        return None
    t = rng.choice(calls)
    i = _offset(code, *t.start)
    return code[:i] + _near_miss(t.string) + code[i + len(t.string):]


def _char_index(code: str, lineno: int, col_bytes: int) -> int:
    """ast positions count UTF-8 bytes; CoNaLa snippets contain non-ASCII strings."""
    line = code.split("\n")[lineno - 1]
    return _offset(code, lineno, len(line.encode("utf-8")[:col_bytes].decode("utf-8", "ignore")))


def _n_call_args(tree: ast.AST) -> int:
    return sum(len(n.args) + len(n.keywords) for n in ast.walk(tree) if isinstance(n, ast.Call))


def _n_calls(tree: ast.AST) -> int:
    return sum(isinstance(n, ast.Call) for n in ast.walk(tree))


def corrupt_drop_arg(code: str, rng: random.Random) -> str | None:
    """Remove one positional or keyword argument of one call (with its comma); the call count stays,
    the argument count falls by exactly one, and the code still parses."""
    try:
        tree = ast.parse(code, filename=sandbox.SNIPPET_FILENAME)
    except (SyntaxError, ValueError):
        return None
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (n.args or n.keywords)]
    rng.shuffle(calls)
    for call in calls:
        args = sorted(call.args + call.keywords, key=lambda a: (a.lineno, a.col_offset))
        j = rng.randrange(len(args))
        start = [_char_index(code, a.lineno, a.col_offset) for a in args]
        end = [_char_index(code, a.end_lineno, a.end_col_offset) for a in args]
        if j + 1 < len(args):
            out = code[:start[j]] + code[start[j + 1]:]  # "a, b" -> "b"
        elif j > 0:
            out = code[:end[j - 1]] + code[end[j]:]  # "a, b" -> "a"
        else:
            out = code[:start[j]] + code[end[j]:]
        try:
            new = ast.parse(out, filename=sandbox.SNIPPET_FILENAME)
        except (SyntaxError, ValueError):
            continue
        if _n_calls(new) == _n_calls(tree) and _n_call_args(new) == _n_call_args(tree) - 1:
            return out
    return None


def corrupt_truncate(code: str, rng: random.Random) -> str | None:
    """Cut the code at 30-70% of its length, like a generation that hit max_new_tokens: a strict
    prefix."""
    n = len(code.rstrip())
    if n < 4:
        return None
    out = code[: rng.randint(int(0.3 * n), int(0.7 * n))].rstrip()
    return out if out.strip() and len(out) < n else None


CORRUPTIONS = {"syntax_break": corrupt_syntax, "renamed_api": corrupt_rename_api,
               "dropped_arg": corrupt_drop_arg, "truncated": corrupt_truncate}
KINDS = ("reference", *CORRUPTIONS, "other_intent", "policy")


# --------------------------------------------------------------------- candidates, annotator, pairs
def build_candidates(examples: list, policy_samples: dict[int, list[str]] | None = None,
                     seed: int = 0) -> list[dict]:
    """Per example: the reference, its corruptions, another intent's snippet and any policy samples
    (keyed by question_id). Identical code within one example is kept once, under the first kind
    that produced it."""
    out = []
    for i, ex in enumerate(examples):
        # string seeds are hashed with sha512: reproducible
        rng = random.Random(f"{seed}:{i}:{ex.question_id}")
        cands = [("reference", ex.snippet)] + [(k, f(ex.snippet, rng))
                                                for k, f in CORRUPTIONS.items()]
        others = [e for e in rng.sample(examples, min(8, len(examples)))
                  if e.question_id != ex.question_id and e.snippet.strip() != ex.snippet.strip()]
        if others:
            cands.append(("other_intent", others[0].snippet))
        cands += [("policy", s) for s in (policy_samples or {}).get(ex.question_id, [])]
        seen = set()
        for kind, code in cands:
            if code is not None and code.strip() and code.strip() not in seen:
                seen.add(code.strip())
                out.append({"example": i, "question_id": ex.question_id, "intent": ex.intent,
                            "reference": ex.snippet, "kind": kind, "code": code})
    return out


# The synthetic annotator's weights: similarity to the reference dominates because the reference
# defines what the intent asked for; syntax, execution and quality separate candidates that are
# equally close to it.
ANNOTATOR_WEIGHTS = {"similarity": 0.5, "syntax": 0.2, "exec": 0.15, "quality": 0.15}


def cap_exec(signals: dict[str, float], reference_exec: float | None) -> dict[str, float]:
    """The signals with exec lowered to the reference's own exec signal (see `annotator_score` for
    why)."""
    used = dict(signals)
    if "exec" in used and reference_exec is not None and used["exec"] > reference_exec:
        used["exec"] = reference_exec
    return used


def annotator_score(signals: dict[str, float], exec_detail: str = "",
                    reference_exec: float | None = None) -> tuple[float, str]:
    """Weighted mean of the available signals (weights renormalised when exec is missing) and the
    reasons.

    The exec signal is capped at the reference's own: the sandbox has none of the snippet's files,
    network or packages, so if the reference itself fails there (FileNotFoundError), a candidate
    that fails differently (`opens(...)` -> NameError) is no better. Execution can show a candidate
    is worse, never better."""
    used = cap_exec(signals, reference_exec)
    if used.get("exec") != signals.get("exec"):
        exec_detail += f" (capped at the reference's {reference_exec:.2f})"
    weights = {k: w for k, w in ANNOTATOR_WEIGHTS.items() if k in used}
    score = sum(w * used[k] for k, w in weights.items()) / sum(weights.values())
    reasons = " ".join(f"{k}={used[k]:.2f}" for k in ANNOTATOR_WEIGHTS if k in used)
    return score, reasons + (f" exec_outcome={exec_detail}" if exec_detail else "")


SANDBOX_BATCH = 32  # distinct snippets per sandbox batch: a stop signal waits for at most one batch


def run_snippets(codes: list[str], timeout_s: float, workers: int, stop=None,
                 desc: str | None = None) -> list:
    """sandbox.execute_many over `codes`, identical code run once, in batches of SANDBOX_BATCH with
    a progress bar (`desc`) and, between batches, the stop check: stop() -> True raises Interrupted.
    The same runs as one execute_many call; PPO's reward (no stop, no desc) makes that one call, so
    a step is never cut in half."""
    if stop is None and desc is None:
        return sandbox.execute_many(codes, timeout_s, workers)
    from plumbing import dist
    from tqdm import tqdm

    unique, results = list(dict.fromkeys(codes)), {}
    with tqdm(total=len(unique), desc=desc, unit="snippet", dynamic_ncols=True,
              disable=desc is None or not dist.is_main()) as bar:
        for start in range(0, len(unique), SANDBOX_BATCH):
            if stop is not None and stop():
                from plumbing.console import Interrupted

                raise Interrupted(f"{desc or 'sandboxed execution'}: stopped after "
                                  f"{start}/{len(unique)} snippets")
            batch = unique[start:start + SANDBOX_BATCH]
            results.update(zip(batch, sandbox.execute_many(batch, timeout_s, workers)))
            bar.update(len(batch))
    return [results[c] for c in codes]


def judge(codes: list[str], references: list[str], timeout_s: float = 2.0, workers: int = 2,
          log=print, stop=None, desc: str | None = None) -> list[dict]:
    """The synthetic annotator on (code, reference) pairs -> [{signals, capped, score, reasons}], in
    input order (`capped`: the signals with the reference exec cap, the ones `score` weighs).
    Execution goes through the sandbox only (each distinct reference runs too, for the cap in
    `annotator_score`); without a sandbox the exec signal is dropped (weight 0) with a warning, and
    every reason says so.
    desc: a progress bar; stop: checked between sandbox batches (run_snippets)."""
    assert len(codes) == len(references), "judge needs one reference per code"
    ok, status = sandbox.sandbox_status()
    if ok:
        refs = list(dict.fromkeys(references))
        results = run_snippets(list(codes) + refs, timeout_s, workers, stop, desc)
        ref_exec = {r: exec_signal(res.outcome) for r, res in zip(refs, results[len(codes):])}
    else:
        log(f"warning: synthetic feedback without the exec signal: {status}")
        results, ref_exec = [None] * len(codes), {}
    out = []
    for code, ref, res in zip(codes, references, results):
        signals = rule_signals(code, ref, res.outcome if res else None)
        score, reasons = annotator_score(signals, res.outcome if res else "disabled (no sandbox)",
                                         ref_exec.get(ref))
        out.append({"signals": signals, "capped": cap_exec(signals, ref_exec.get(ref)),
                    "score": score, "reasons": reasons})
    return out


def gold_scores(codes: list[str], references: list[str], timeout_s: float = 2.0, workers: int = 2,
                log=print) -> list[float]:
    """The annotator's score of each code against its reference: the evaluation's "gold" (the human
    RLHF stands in for), measured exactly as the reward model's training labels were."""
    return [j["score"] for j in judge(codes, references, timeout_s, workers, log)]


def annotate(candidates: list[dict], timeout_s: float = 2.0, workers: int = 2, log=print, stop=None,
             desc: str | None = None) -> list[dict]:
    """Adds signals, score and reasons (`judge`) to every candidate."""
    judged = judge([c["code"] for c in candidates], [c["reference"] for c in candidates], timeout_s,
                   workers, log, stop, desc)
    return [dict(cand, **j) for cand, j in zip(candidates, judged)]


# Annotator score gap below which two candidates count as a tie and give no pair. Small, because the
# hardest negatives (a renamed API, one dropped argument) differ from the reference by a few
# characters of chrF.
MIN_MARGIN = 0.02


def preference_pairs(annotated: list[dict], min_margin: float = MIN_MARGIN) -> list[dict]:
    """All candidate pairs of one example whose annotator scores differ by >= min_margin
    (InstructGPT-style K-choose-2 comparisons), chosen = the higher score."""
    by_example: dict[int, list[dict]] = {}
    for c in annotated:
        by_example.setdefault(c["example"], []).append(c)
    pairs = []
    for cands in by_example.values():
        cands = sorted(cands, key=lambda c: -c["score"])
        for a_i, a in enumerate(cands):
            for b in cands[a_i + 1:]:
                if a["score"] - b["score"] >= min_margin:
                    pairs.append({"question_id": a["question_id"], "intent": a["intent"],
                                  "reference": a["reference"], "chosen": a["code"],
                                  "rejected": b["code"], "margin": a["score"] - b["score"],
                                  "chosen_kind": a["kind"], "rejected_kind": b["kind"],
                                  "chosen_score": a["score"], "rejected_score": b["score"],
                                  "reasons": {"chosen": a["reasons"], "rejected": b["reasons"]}})
    return pairs


def build_preference_pairs(train_examples: list, val_examples: list,
                           policy_samples: dict[int, list[str]] | None, cfg, log=print,
                           with_candidates: bool = False, stop=None):
    """(train_pairs, val_pairs); the validation intents' pairs are held out for the RM's pairwise
    accuracy. with_candidates=True also returns the annotated held-out candidates (for the
    RM-annotator rank correlation).
    stop: checked between sandbox batches (run_snippets)."""
    splits, val_annotated = [], []
    for name, examples in (("train", train_examples), ("val", val_examples)):
        cands = build_candidates(examples, policy_samples, cfg.seed)
        log(f"feedback: annotating {len(cands)} {name} candidates from {len(examples)} intents")
        annotated = annotate(cands, cfg.exec_timeout_s, log=log, stop=stop,
                             desc=f"annotating {name}")
        splits.append(preference_pairs(annotated))
        val_annotated = annotated
    return (splits[0], splits[1], val_annotated) if with_candidates else (splits[0], splits[1])


def pairing(pair: dict) -> str:
    """'policy>policy', 'reference>policy', 'policy>truncated', ...: which kinds a pair compares,
    chosen first."""
    return f"{pair['chosen_kind']}>{pair['rejected_kind']}"


def pair_counts_by_kind(pairs: list[dict], by: str = "rejected_kind") -> dict[str, int]:
    """Pair counts per rejected kind (the corruption a pair teaches against); by="pairing" counts
    'chosen>rejected' combinations instead."""
    if by == "pairing":
        return dict(Counter(pairing(p) for p in pairs).most_common())
    return dict(Counter(p[by] for p in pairs).most_common())

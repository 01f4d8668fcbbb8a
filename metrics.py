"""Evaluation metrics for code generation, at parity with the reference implementations.

  codebleu / sentence_codebleu  CodeBLEU (Ren et al. 2020) as the `codebleu` 0.7.0 package
  codebleu_per_example          (k4black's port of the CodeXGLUE evaluator) computes it, quirks
  codebleu_counts / _from_counts  included, hand-written on tree-sitter + tree-sitter-python;
                                per-pair counts sum to the corpus score (paired bootstrap):
                                codebleu_score.py
  ruby / ruby_level             RUBY (Tran et al. 2019): exact Zhang-Shasha tree edit distance, else
                                token edit distance; the work is size-bounded (RUBY_MAX_TREE_PAIRS),
                                ruby_level says which
  rouge_l                       ROUGE-L F of the token LCS on tranX tokens (as Evtikhiev et al. 2023
                                did)
  bleu                          sacrebleu corpus BLEU / 100
  conala_bleu                   the official CoNaLa evaluation (tokenize_for_bleu_eval + unsmoothed
                                corpus BLEU-4)
  bertscore / bertscore_details mean F1 through the `bert-score` package, offline, with the model
                                named
  syntax_valid                  tree-sitter parses the code without error: codebleu_ts.py
  evaluate                      all of the above on 0-1 scales; `python metrics.py PRED.jsonl` is
                                its CLI (metrics_cli.py: these, chrF and --gold, the columns of
                                report.md)

Each name is imported from the file that defines it. Helpers hold the long parts: codebleu_score.py
weighs CodeBLEU from the four matches per pair that codebleu_ts.py counts (n-grams, AST subtrees,
the dataflow graph); ruby_ted.py has RUBY's edit distances, for which this file parses and picks the
level. None of them imports this file.
Import is instant: tree-sitter, sacrebleu, bert_score and torch are imported inside the functions
that need them. Every result is deterministic: no timeouts, no anytime approximations, no
dependence on PYTHONHASHSEED.
Parity: with the same grammar (tree-sitter-python 0.21) our CodeBLEU equals codebleu 0.7.0 on 6,718
CoNaLa pairs, every component (on hash-seed-dependent pairs, one of its outcomes); with 0.25 a few
pairs move for grammar reasons (tests/test_metrics.py lists them). One deliberate difference: a
blank candidate scores 0 on every metric and is not syntax-valid (codebleu 0.7.0 gives it 0.25 and
tree-sitter parses the empty program, RUBY gave it ~0.15).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from codebleu_score import CODEBLEU_KEYS, check_pairs, codebleu_per_example, conala_tokens
from codebleu_ts import ngrams, parse, syntax_valid
from config import EMBEDDED_ENCODER, ConfigError
from ruby_ted import token_similarity, tree_similarity, tree_size


# ----------------------------------------------------------------------------- RUBY
# RUBY's work bound. Zhang-Shasha grows with |T_ref| x |T_cand| (a 300-line pair once took 64 s) and
# Levenshtein with |ref| x |cand| tokens, so each has a cap, and ruby_level names the level actually
# used:
#   "tree"                     both sides parse and |T_ref| x |T_cand| <= RUBY_MAX_TREE_PAIRS
#                              (exact, unchanged)
#   "string"                   a side does not parse (Tran et al. 2019's fallback)
#   "string (tree too large)"  both parse but the tree pair is over the cap: the string level
#                              instead
#   "string (truncated)"       at the string level, a side has > RUBY_MAX_TOKENS tokens: both are
#                              cut to that many
#   "empty"                    a blank candidate for a non-blank reference: 0, no code is no
#                              similarity
# CoNaLa's largest snippet tree has 148 nodes, so no CoNaLa-sized pair reaches either cap.
RUBY_MAX_TREE_PAIRS = 200 * 200  # ~0.5 s of pure-Python Zhang-Shasha on a 2-core laptop
RUBY_MAX_TOKENS = 1000  # per side, ~0.5 s of Levenshtein


def _ruby(reference: str, candidate: str, cache: dict | None = None) -> tuple[float, str]:
    # the empty module's one node would still "match" ~1/|T_ref|
    if not candidate.strip() and reference.strip():
        return 0.0, "empty"
    ref_root, hyp_root = parse(reference, cache), parse(candidate, cache)
    level = _ruby_level(ref_root, hyp_root)
    if level == "tree":
        return tree_similarity(ref_root, hyp_root), "tree"
    # Tran et al. 2019 STS: token edit distance when a tree is unavailable (tranX tokens, like
    # codegen-metrics)
    ref, hyp = conala_tokens(reference), conala_tokens(candidate)
    if max(len(ref), len(hyp)) > RUBY_MAX_TOKENS:
        return (token_similarity(ref[:RUBY_MAX_TOKENS], hyp[:RUBY_MAX_TOKENS]),
                "string (truncated)")
    return token_similarity(ref, hyp), level


def _ruby_level(ref_root, hyp_root) -> str:
    if ref_root.has_error or hyp_root.has_error:
        return "string"
    return ("tree" if tree_size(ref_root) * tree_size(hyp_root) <= RUBY_MAX_TREE_PAIRS
            else "string (tree too large)")


def ruby(reference: str, candidate: str) -> float:
    """RUBY (Tran et al. 2019) without its PDG level: tree similarity when both sides parse cleanly,
    else string; bounded in work by RUBY_MAX_TREE_PAIRS and RUBY_MAX_TOKENS (ruby_level says when a
    bound applied)."""
    return _ruby(reference, candidate)[0]


def ruby_level(reference: str, candidate: str) -> str:
    """Which RUBY level `ruby` used: "tree", "string", "string (tree too large)",
    "string (truncated)" or "empty"."""
    return _ruby(reference, candidate)[1]


# ------------------------------------------------------------------------- BLEU, ROUGE-L, BERTScore
def rouge_l(reference: str, candidate: str) -> float:
    """rouge-score 0.1.2 _score_lcs F-measure on tranX tokens (rouge-score's own tokenizer drops
    punctuation)."""
    ref, hyp = conala_tokens(reference), conala_tokens(candidate)
    if not ref or not hyp:
        return 0.0
    prev = [0] * (len(hyp) + 1)
    for x in ref:
        cur = [0]
        for j, y in enumerate(hyp):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    precision, recall = prev[-1] / len(hyp), prev[-1] / len(ref)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def bleu(references: list[str], candidates: list[str]) -> float:
    """sacrebleu corpus BLEU (13a tokenisation, exp smoothing) / 100."""
    import sacrebleu

    check_pairs(references, candidates)
    return sacrebleu.corpus_bleu(list(candidates), [list(references)]).score / 100


def conala_bleu(references: list[str], candidates: list[str]) -> float:
    """conala-baseline eval/conala_eval.py: tokenize_for_bleu_eval, then the tensorflow/nmt
    compute_bleu with smooth=False: corpus BLEU-4, clipped n-gram precisions, geometric mean,
    brevity penalty exp(1 - r/c) if c <= r."""
    check_pairs(references, candidates)
    matches, possible, ref_len, hyp_len = [0] * 4, [0] * 4, 0, 0
    for reference, candidate in zip(references, candidates):
        ref, hyp = conala_tokens(reference), conala_tokens(candidate)
        ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
        for n in range(1, 5):
            matches[n - 1] += sum((ngrams(hyp, n) & ngrams(ref, n)).values())
            possible[n - 1] += max(0, len(hyp) - n + 1)
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    # also covers an empty corpus, where compute_bleu would divide by zero
    if min(precisions) <= 0:
        return 0.0
    geo_mean = math.exp(sum(0.25 * math.log(p) for p in precisions))
    ratio = hyp_len / ref_len
    return geo_mean * (1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio))


def bertscore_details(references: list[str], candidates: list[str],
                      model: str = EMBEDDED_ENCODER, num_layers: int | None = None,
                      batch_size: int = 64) -> dict:
    """BERTScore (Zhang et al. 2020) via `bert_score.score`, offline. `model` is a models.py spec
    (embedded:..., tiny:bert), a folder or a hub id; num_layers=None uses the model's last layer.
    Returns the mean F1 (`bertscore`), precision, recall, and the model and layer used, so reports
    name their encoder."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import bert_score
    import torch

    from plumbing import models

    check_pairs(references, candidates)
    path = models.encoder_path(model)
    if num_layers is None:
        num_layers = encoder_depth(model)
        if num_layers is None:
            raise ValueError(f"bertscore: give num_layers for {model!r} "
                             "(no local config.json to read it from)")
    check_bertscore_layers(model, num_layers)
    # bert-score 0.3.12 utils.py greedy_cos_idf (issues #47, #107): a candidate or reference that is
    # empty after .strip() scores P = R = F = 0, with a warning. Its sent_encode gets there via
    # build_inputs_with_special_tokens, which transformers 5's fast tokenizers lack, so we give
    # empty pairs that 0 and send only the others to bert_score (idf is off: no pair's token weights
    # depend on the other pairs). Means still count every pair.
    keep = [i for i, (r, c) in enumerate(zip(references, candidates)) if r.strip() and c.strip()]
    # (P, R, F) per pair, laid out like bert_score's own all_preds
    scores = torch.zeros(len(candidates), 3)
    if keep:
        scores[keep] = torch.stack(bert_score.score([candidates[i] for i in keep],
                                                    [references[i] for i in keep],
                                                    model_type=path, num_layers=num_layers,
                                                    batch_size=batch_size, verbose=False), dim=-1)
    precision, recall, f1 = scores.unbind(-1)
    return {"bertscore": f1.mean().item(), "bertscore_precision": precision.mean().item(),
            "bertscore_recall": recall.mean().item(), "bertscore_model": model,
            "bertscore_layers": num_layers, "bertscore_per_example": f1.tolist()}


def encoder_depth(model: str) -> int | None:
    """num_hidden_layers from the encoder's local config.json; None for a hub id that is not on
    disk."""
    from plumbing import models

    config_file = Path(models.encoder_path(model)) / "config.json"
    try:
        return int(json.loads(config_file.read_text(encoding="utf-8"))["num_hidden_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_bertscore_layers(model: str, num_layers: int) -> None:
    """bert-score reads hidden layer `num_layers`; past the encoder's depth it would read another
    layer silently."""
    depth = encoder_depth(model)
    if depth is not None and not 1 <= num_layers <= depth:
        raise ConfigError(f"--bertscore_layers={num_layers}: {model} has {depth} layers; "
                          f"use 1 to {depth}")


def bertscore(references: list[str], candidates: list[str], model: str = EMBEDDED_ENCODER,
              num_layers: int | None = None) -> float:
    return bertscore_details(references, candidates, model, num_layers)["bertscore"]


# ----------------------------------------------------------------------------- everything at once
def evaluate(references: list[str], candidates: list[str], *,
             codebleu_tokenizer: str = "whitespace", with_bertscore: bool = True,
             bertscore_model: str = EMBEDDED_ENCODER, bertscore_layers: int | None = None,
             per_example: bool = False) -> dict:
    """All metrics on 0-1 scales. Corpus metrics: codebleu (+ its four parts), bleu, conala_bleu;
    means over pairs: rouge_l, ruby, syntax_valid_rate (candidates tree-sitter parses cleanly),
    exact_match. per_example=True adds `per_example` lists (codebleu, ruby, rouge_l, syntax_valid)
    for a paired bootstrap."""
    check_pairs(references, candidates)
    per_cb, corpus_cb = codebleu_per_example(references, candidates, tokenizer=codebleu_tokenizer,
                                             corpus=True)
    cache = {}
    rubies = [_ruby(r, c, cache) for r, c in zip(references, candidates)]
    rouges = [rouge_l(r, c) for r, c in zip(references, candidates)]
    valid = [syntax_valid(c, cache) for c in candidates]
    n = len(references)
    out = ({"n": n} | {k: corpus_cb[k] for k in CODEBLEU_KEYS}
           | {"codebleu_tokenizer": codebleu_tokenizer})
    out |= {"bleu": bleu(references, candidates),
            "conala_bleu": conala_bleu(references, candidates),
            "rouge_l": sum(rouges) / n, "ruby": sum(r for r, _ in rubies) / n,
            "ruby_tree_fraction": sum(level == "tree" for _, level in rubies) / n,
            "syntax_valid_rate": sum(valid) / n,
            "exact_match": sum(r.strip() == c.strip()
                               for r, c in zip(references, candidates)) / n}
    if with_bertscore:
        details = bertscore_details(references, candidates, bertscore_model, bertscore_layers)
        out |= {k: details[k] for k in ("bertscore", "bertscore_model", "bertscore_layers")}
    if per_example:
        out["per_example"] = {"codebleu": [d["codebleu"] for d in per_cb],
                              "ruby": [r for r, _ in rubies],
                              "rouge_l": rouges, "syntax_valid": valid}
        if with_bertscore:
            out["per_example"]["bertscore"] = details["bertscore_per_example"]
    return out


# ----------------------------------------------------------------------------- CLI
class InputError(ValueError):
    """A problem with the user's PRED.jsonl; main() prints it as one line."""


def load_predictions(path: str) -> tuple[list[str], list[str]]:
    """Read PRED.jsonl (one {"reference": str, "prediction": str} per line; blank lines skipped)."""
    try:
        # split on \n only: a record written with ensure_ascii=False holds raw U+2028 and U+0085
        # inside strings
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read "
                         f"({e.strerror if isinstance(e, OSError) else e})") from None
    references, predictions = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {number}: "
                             "expected an object with 'reference' and 'prediction'")
        for key, bucket in (("reference", references), ("prediction", predictions)):
            if key not in record:
                raise InputError(f"{path}: line {number}: missing key {key!r}")
            if not isinstance(record[key], str):
                raise InputError(f"{path}: line {number}: {key!r} must be a string, "
                                 f"not {type(record[key]).__name__}")
            bucket.append(record[key])
    if not references:
        raise InputError(f"{path}: no records (the file is empty)")
    return references, predictions


if __name__ == "__main__":  # `python metrics.py PRED.jsonl`: the CLI is metrics_cli.py's (it also
    # needs the annotator and the sandbox, which this module never imports). Run as a script this
    # file is `__main__`, so metrics_cli importing `metrics` is no cycle.
    import metrics_cli

    sys.exit(metrics_cli.main())

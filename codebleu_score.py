"""CodeBLEU's scores from its match counts, as the `codebleu` 0.7.0 package (k4black's port of the
CodeXGLUE evaluator) weighs them, quirks included; and the tokenisers every metric shares.

  conala_tokens                   tokenize_for_bleu_eval (CoNaLa), also used by metrics.py's
                                  conala_bleu, rouge_l and RUBY's string level
  codebleu / sentence_codebleu    CodeBLEU (Ren et al. 2020) of a corpus or of one pair
  codebleu_per_example            one CodeBLEU dict per pair (for a paired bootstrap)
  codebleu_counts / _from_counts  per-pair counts that sum to the corpus score

codebleu_ts.py counts the four matches of a pair (n-grams, AST subtrees, the dataflow graph); this
file sums and weighs them. Named codebleu_score, not codebleu, so it never shadows the PyPI
`codebleu` package that bench/metrics_bench.py compares against. metrics.py holds the other metrics
and `evaluate`.
"""
from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass

from codebleu_ts import ngram_counts, tree_match_counts

CODEBLEU_KEYS = ("codebleu", "ngram_match", "weighted_ngram_match", "syntax_match",
                 "dataflow_match")
TOKENIZERS = ("whitespace", "conala")


# ----------------------------------------------------------------------------- tokenisers
@functools.lru_cache(maxsize=1)
def _conala_res():
    return re.compile(r"([^A-Za-z0-9_])"), re.compile(r"([a-z])([A-Z])"), re.compile(r"\s+")


def conala_tokens(code: str) -> list[str]:
    """conala-baseline eval/conala_eval.py tokenize_for_bleu_eval (from Ling et al. 2016), which is
    also tranX's tokenize_tranx and codegen-metrics' tokenizer: split off every non-word character
    and camelCase, quotes -> `."""
    punct, camel, space = _conala_res()
    code = space.sub(" ", camel.sub(r"\1 \2", punct.sub(r" \1 ", code)))
    return [t for t in code.replace('"', "`").replace("'", "`").split(" ") if t]


def _tokenizer(name: str):
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")
    # codebleu 0.7.0 codebleu.py: the default tokenizer is `s.split()` (the quirk that sinks the
    # n-gram parts)
    return str.split if name == "whitespace" else conala_tokens


def check_pairs(references, candidates) -> None:
    if isinstance(references, str) or isinstance(candidates, str):
        raise TypeError("references and candidates must be lists of strings, not a single string")
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    if not references:
        raise ValueError("no (reference, candidate) pairs to score")


# ----------------------------------------------------------------------------- CodeBLEU
def _nltk_bleu(nums, dens, hyp_len: int, ref_len: int) -> float:
    """codebleu bleu.py corpus_bleu (NLTK's): 0 without unigram matches, Chen & Cherry method1
    smoothing (a zero numerator becomes 0.1), brevity penalty exp(1 - r/c) unless c > r, and 0 for
    an empty hypothesis."""
    if nums[0] == 0:
        return 0.0
    bp = 1.0 if hyp_len > ref_len else 0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(math.fsum(0.25 * math.log((num if num != 0 else 0.1) / den)
                                   for num, den in zip(nums, dens)))


@dataclass
class CodeBLEUCounts:
    """Match counts of one pair, or summed over a corpus: the reference micro-averages, so corpus
    CodeBLEU is computed from the summed counts, never by averaging pair scores. Lists hold
    n = 1..4."""
    # clipped candidate n-grams found in the reference (bleu.py modified_precision)
    ngram_match: list
    ngram_total: list  # candidate n-grams, at least 1
    # the same overlap, unigrams weighted 1 (keyword) or 0.2 (weighted_ngram_match.py)
    weighted_match: list
    weighted_total: list  # *reference* n-grams, weighted alike, at least 1: a recall
    hyp_len: int  # candidate tokens
    ref_len: int  # reference tokens
    # weighted_ngram_match.py's brevity penalty counts each reference as 2 tokens (see below)
    pairs: int
    syntax_match: int  # reference subtrees found among the candidate's
    syntax_total: int  # reference subtrees
    dataflow_match: int  # normalised reference dataflow edges matched one-to-one in the candidate
    dataflow_total: int  # normalised reference dataflow edges

    @staticmethod
    def total(counts: list[CodeBLEUCounts]) -> CodeBLEUCounts:
        """Field by field, adding in pair order like the reference's running Counters (so floats
        agree)."""
        add = functools.partial(functools.reduce, operator.add)
        return CodeBLEUCounts(*(
            [add(column) for column in zip(*field)] if isinstance(field[0], list) else add(field)
            for field in zip(*(vars(c).values() for c in counts))))


def _codebleu_counts(reference: str, candidate: str, tokenize, cache: dict) -> CodeBLEUCounts:
    ref, hyp = reference.strip(), candidate.strip()  # codebleu.py strips both before anything else
    ref_toks, hyp_toks = tokenize(ref), tokenize(hyp)
    syntax_match, syntax_total, dataflow_match, dataflow_total = tree_match_counts(ref, hyp, cache)
    return CodeBLEUCounts(*ngram_counts(ref_toks, hyp_toks), hyp_len=len(hyp_toks),
                          ref_len=len(ref_toks), pairs=1,
                          syntax_match=syntax_match, syntax_total=syntax_total,
                          dataflow_match=dataflow_match, dataflow_total=dataflow_total)


def _codebleu_score(c: CodeBLEUCounts, weights, tokenizer: str) -> dict:
    # blank candidate(s): 0, where codebleu 0.7.0 gives 0.25 through the dataflow quirk below
    if c.hyp_len == 0:
        return {key: 0.0 for key in CODEBLEU_KEYS} | {"tokenizer": tokenizer}
    scores = {
        "ngram_match": _nltk_bleu(c.ngram_match, c.ngram_total, c.hyp_len, c.ref_len),
        # weighted_ngram_match.py quirk: its brevity penalty takes len() of each [tokens, weights]
        # reference entry, so every reference counts as 2 tokens long; only short candidates
        # (< 2 tokens on average) are penalised
        "weighted_ngram_match": _nltk_bleu(c.weighted_match, c.weighted_total, c.hyp_len,
                                           2 * c.pairs),
        "syntax_match": c.syntax_match / c.syntax_total,
        # dataflow_match.py: no reference dataflow at all -> 0 (with a warning)
        "dataflow_match": c.dataflow_match / c.dataflow_total if c.dataflow_total else 0.0,
    }
    alpha, beta, gamma, theta = weights
    # codebleu.py `theta * (dataflow_match_score or 1)`: a dataflow score of 0 -- no reference
    # dataflow, or simply no matching edge -- counts as 1 in the total. Kept for parity;
    # `dataflow_match` itself still reports 0.
    scores["codebleu"] = (alpha * scores["ngram_match"] + beta * scores["weighted_ngram_match"]
                          + gamma * scores["syntax_match"]
                          + theta * (scores["dataflow_match"] or 1))
    return {key: scores[key] for key in CODEBLEU_KEYS} | {"tokenizer": tokenizer}


def codebleu_counts(references: list[str], candidates: list[str],
                    tokenizer: str = "whitespace") -> list:
    """One CodeBLEUCounts per pair (sum them for the corpus); codebleu_from_counts turns either into
    scores."""
    check_pairs(references, candidates)
    # cache: each distinct snippet is parsed and analysed once
    tokenize, cache = _tokenizer(tokenizer), {}
    return [_codebleu_counts(r, c, tokenize, cache) for r, c in zip(references, candidates)]


def codebleu_from_counts(counts: CodeBLEUCounts | list, weights=(0.25, 0.25, 0.25, 0.25),
                         tokenizer: str = "whitespace") -> dict:
    total = CodeBLEUCounts.total(counts) if isinstance(counts, list) else counts
    return _codebleu_score(total, weights, tokenizer)


def codebleu_per_example(references: list[str], candidates: list[str],
                         weights=(0.25, 0.25, 0.25, 0.25), tokenizer: str = "whitespace",
                         corpus: bool = False):
    """Sentence-level CodeBLEU dicts, one per pair (for a paired bootstrap); with corpus=True also
    the corpus dict."""
    counts = codebleu_counts(references, candidates, tokenizer)
    per = [_codebleu_score(c, weights, tokenizer) for c in counts]
    return (per, codebleu_from_counts(counts, weights, tokenizer)) if corpus else per


def codebleu(references: list[str], candidates: list[str], weights=(0.25, 0.25, 0.25, 0.25),
             tokenizer: str = "whitespace") -> dict:
    """Corpus CodeBLEU = a*ngram + b*weighted ngram + g*syntax + t*dataflow, micro-averaged over
    pairs like codebleu 0.7.0 `calc_codebleu(refs, preds, lang="python")`. Keys: CODEBLEU_KEYS +
    `tokenizer` (whitespace, the reference's default, or conala = tokenize_for_bleu_eval, which
    scores raw snippets like `f(x)` fairly)."""
    return codebleu_from_counts(codebleu_counts(references, candidates, tokenizer), weights,
                                tokenizer)


def sentence_codebleu(reference: str, candidate: str, weights=(0.25, 0.25, 0.25, 0.25),
                      tokenizer: str = "whitespace") -> dict:
    return codebleu([reference], [candidate], weights, tokenizer)

"""Evaluation metrics for code generation, at parity with the reference implementations.

  codebleu / sentence_codebleu  CodeBLEU (Ren et al. 2020) as the `codebleu` 0.7.0 package (k4black's port of the
  codebleu_per_example          CodeXGLUE evaluator) computes it, quirks included, hand-written on tree-sitter +
  codebleu_counts / _from_counts  tree-sitter-python; per-pair counts sum to the corpus score (paired bootstrap)
  ruby / ruby_level             RUBY (Tran et al. 2019): exact Zhang-Shasha tree edit distance, else token edit distance
  rouge_l                       ROUGE-L F of the token LCS on tranX tokens (as Evtikhiev et al. 2023 did)
  bleu                          sacrebleu corpus BLEU / 100
  conala_bleu                   the official CoNaLa evaluation (tokenize_for_bleu_eval + unsmoothed corpus BLEU-4)
  bertscore / bertscore_details mean F1 through the `bert-score` package, offline, with the model named
  syntax_valid                  tree-sitter parses the code without error
  evaluate                      all of the above on 0-1 scales; `python metrics.py PRED.jsonl` is its CLI

Import is instant: tree-sitter, sacrebleu, bert_score and torch are imported inside the functions that need them.
Every result is deterministic: no timeouts, no anytime approximations, no dependence on PYTHONHASHSEED.
Parity: with the same grammar (tree-sitter-python 0.21) our CodeBLEU equals codebleu 0.7.0 on 6,718 CoNaLa pairs,
every component (on hash-seed-dependent pairs, one of its outcomes); with 0.25 a few pairs move for grammar reasons
(tests/test_metrics.py lists them).
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import math
import operator
import re
import sys
import tokenize as pytokenize
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from config import EMBEDDED_ENCODER

CODEBLEU_KEYS = ("codebleu", "ngram_match", "weighted_ngram_match", "syntax_match", "dataflow_match")
TOKENIZERS = ("whitespace", "conala")
# codebleu 0.7.0 keywords/python.txt: these tokens weigh 1 in the weighted n-gram match, all others 0.2
PYTHON_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except finally for from "
    "global if import in is lambda nonlocal not or pass raise return try while with yield match case type".split())


# ----------------------------------------------------------------------------- tokenisers
@functools.lru_cache(maxsize=1)
def _conala_res():
    return re.compile(r"([^A-Za-z0-9_])"), re.compile(r"([a-z])([A-Z])"), re.compile(r"\s+")


def conala_tokens(code: str) -> list[str]:
    """conala-baseline eval/conala_eval.py tokenize_for_bleu_eval (from Ling et al. 2016), which is also tranX's
    tokenize_tranx and codegen-metrics' tokenizer: split off every non-word character and camelCase, quotes -> `."""
    punct, camel, space = _conala_res()
    code = space.sub(" ", camel.sub(r"\1 \2", punct.sub(r" \1 ", code)))
    return [t for t in code.replace('"', "`").replace("'", "`").split(" ") if t]


def _tokenizer(name: str):
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid: {', '.join(TOKENIZERS)}")
    # codebleu 0.7.0 codebleu.py: the default tokenizer is `s.split()` (the quirk that sinks the n-gram parts)
    return str.split if name == "whitespace" else conala_tokens


# ----------------------------------------------------------------------------- n-gram parts of CodeBLEU
def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def _ngram_counts(ref: list[str], hyp: list[str]) -> tuple[list, list, list, list]:
    """Per-pair numerators/denominators for n=1..4 of (a) BLEU's clipped precision (codebleu bleu.py
    modified_precision) and (b) the keyword-weighted match, which despite its name divides by the *reference*
    counts, i.e. is a recall (codebleu weighted_ngram_match.py modified_recall). Both clip to the same overlap."""
    nums, dens, wnums, wdens = [], [], [], []
    for n in range(1, 5):
        hyp_c, ref_c = (Counter(hyp), Counter(ref)) if n == 1 else (_ngrams(hyp, n), _ngrams(ref, n))
        ref_get = ref_c.get
        overlap = sum(min(c, ref_get(g, 0)) for g, c in hyp_c.items())
        nums.append(overlap)
        dens.append(max(1, len(hyp) - n + 1))  # max(1, .): as the reference, an order too long for the text is 0/1
        if n == 1:  # unigrams weigh 1 (keyword) or 0.2; summed in the reference's order so floats agree bit for bit
            wnum = wden = 0
            hyp_get = hyp_c.get
            for g, c in ref_c.items():
                w = 1 if g in PYTHON_KEYWORDS else 0.2
                wnum += min(c, hyp_get(g, 0)) * w
                wden += c * w
            wnums.append(wnum), wdens.append(max(1, wden))
        else:
            wnums.append(overlap), wdens.append(max(1, len(ref) - n + 1))
    return nums, dens, wnums, wdens


def _nltk_bleu(nums, dens, hyp_len: int, ref_len: int) -> float:
    """codebleu bleu.py corpus_bleu (NLTK's): 0 without unigram matches, Chen & Cherry method1 smoothing (a zero
    numerator becomes 0.1), brevity penalty exp(1 - r/c) unless c > r, and 0 for an empty hypothesis."""
    if nums[0] == 0:
        return 0.0
    bp = 1.0 if hyp_len > ref_len else 0.0 if hyp_len == 0 else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(math.fsum(0.25 * math.log((num if num != 0 else 0.1) / den) for num, den in zip(nums, dens)))


# ----------------------------------------------------------------------------- tree-sitter
@functools.lru_cache(maxsize=1)
def _parser():
    import tree_sitter
    import tree_sitter_python

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


def _parse(code: str, cache: dict | None = None):
    """Root node of `code`; `cache` (one dict per call) parses each distinct string once."""
    if cache is not None and code in cache:
        return cache[code]
    root = _parser().parse(code.encode("utf-8")).root_node  # a Node keeps its Tree alive
    if cache is not None:
        cache[code] = root
    return root


def syntax_valid(code: str) -> bool:
    """tree-sitter parses `code` without ERROR or MISSING nodes (the empty program is valid, as for ast.parse)."""
    return not _parse(code).has_error


def strip_comments_and_docstrings(code: str) -> str:
    """codebleu parser/utils.py remove_comments_and_docstrings, applied before the syntax and dataflow matches.
    Quirks kept: a string token that starts a logical line (or the snippet) counts as a docstring and is dropped,
    so `'-'.join(x)` becomes `.join(x)`; code the tokenizer rejects (unbalanced brackets) is returned unchanged.
    Uses Python's own tokenizer, so results follow the running Python (the golden values were made on 3.11)."""
    if _nothing_to_strip(code):
        return code
    return _strip_with_tokenize(code)


def _nothing_to_strip(code: str) -> bool:
    """True when the token-by-token rebuild below would return `code` itself: no comment, no string that starts a
    line (the only strings it drops), no blank line, continuation or tab/CR/FF (whose spacing it rewrites)."""
    return not (_unsafe_chars().search(code) or _line_start_string().search(code))


@functools.lru_cache(maxsize=1)
def _unsafe_chars():
    return re.compile(r"[#\\\t\r\f\v]|(?:^|\n)[ ]*(?:\n|$)")


@functools.lru_cache(maxsize=1)
def _line_start_string():
    return re.compile(r"(?m)^[ ]*[rRbBuUfF]{0,2}['\"]")


def _strip_with_tokenize(code: str) -> str:
    try:
        toks = list(pytokenize.generate_tokens(io.StringIO(code).readline))
    except Exception:  # TokenError, IndentationError, ...: the reference catches everything and keeps the code
        return code
    out, prev_type, last_row, last_col = [], pytokenize.INDENT, -1, 0
    for tok in toks:
        (row, col), (end_row, end_col) = tok.start, tok.end
        if row > last_row:
            last_col = 0
        if col > last_col:
            out.append(" " * (col - last_col))
        if tok.type == pytokenize.STRING:
            if prev_type not in (pytokenize.INDENT, pytokenize.NEWLINE) and col > 0:
                out.append(tok.string)
        elif tok.type != pytokenize.COMMENT:
            out.append(tok.string)
        prev_type, last_row, last_col = tok.type, end_row, end_col
    return "\n".join(line for line in "".join(out).split("\n") if line.strip())


# ----------------------------------------------------------------------------- dataflow (CodeXGLUE DFG_python)
# Ported from codebleu parser/DFG.py and parser/utils.py with the same control flow, so the same graphs. Edges are
# (name, token index, relation, parent names, parent indices). Two changes that leave results as they were:
# `states` (name -> indices where it was last set) is updated in place instead of copied at every node, with copies
# where an if/elif/else branches; and where the reference merges parent lists with list(set(...)), whose order
# follows PYTHONHASHSEED, we keep first-occurrence order. That order names the normalised variables, so ours is
# deterministic and equals one of the reference's hash-seed outcomes.
_BINDERS = frozenset({"assignment", "augmented_assignment", "for_in_clause", "for_statement", "while_statement",
                      "default_parameter"})


class _Flat:
    """A snippet's tree flattened in source order for the dataflow walk, since tree-sitter re-creates node objects
    on every access. Node i has kind[i] and kids[i]; a token (utils.py: a leaf or a whole string literal, never a
    comment) has tok[i] = (token index, text) as DFG.py's index_to_code gives it; tokens lo[i]:hi[i] lie under i."""
    __slots__ = ("kind", "kids", "node", "tok", "lo", "hi", "leaves", "comprehensions")

    def __init__(self):
        self.kind, self.kids, self.node, self.tok, self.lo, self.hi, self.leaves = [], [], [], [], [], [], []
        self.comprehensions = False  # any for_in_clause? (else no node needs its children reordered)

    def field(self, i: int, name: str):
        child = self.node[i].child_by_field_name(name)
        return None if child is None else next(c for c in self.kids[i] if self.node[c].id == child.id)


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _variables(t: _Flat, i: int) -> list[tuple]:
    """utils.py tree_to_variable_index: (index, text) of the tokens under i whose text differs from their type."""
    return [t.tok[j] for j in t.leaves[t.lo[i]:t.hi[i]] if t.kind[j] != t.tok[j][1]]


def _sides(t: _Flat, i: int) -> tuple[list, list]:
    """DFG.py: pair `a, b = x, y` element-wise when both sides have the same length, else the whole sides."""
    left, right = t.field(i, "left"), t.field(i, "right")
    lefts, rights = [x for x in t.kids[left] if t.kind[x] != ","], [x for x in t.kids[right] if t.kind[x] != ","]
    if len(lefts) != len(rights):
        lefts, rights = [left], [right]
    return lefts or [left], rights or [right]


def _assign(t: _Flat, lefts: list, rights: list, dfg: list, states: dict) -> dict:
    """DFG.py: walk the right-hand sides, then every left variable is computedFrom all right variables."""
    for right in rights:
        states = _dfg(t, right, dfg, states)
    for left, right in zip(lefts, rights):
        sources = _variables(t, right)
        for idx, name in _variables(t, left):
            dfg.append((name, idx, "computedFrom", [s[1] for s in sources], [s[0] for s in sources]))
            states[name] = [idx]
    return states


def _merge_loop(dfg: list) -> list:
    """DFG.py for/while: a loop body is walked twice; merge the duplicate edges."""
    merged = {}
    for name, idx, rel, names, idxs in dfg:
        if (name, idx, rel) in merged:
            old = merged[name, idx, rel]
            merged[name, idx, rel] = [_unique(old[0] + names), sorted(set(old[1] + idxs))]
        else:
            merged[name, idx, rel] = [names, idxs]
    return sorted(((*key, *val) for key, val in merged.items()), key=_idx)


def _idx(edge) -> int:
    return edge[1]


def _dfg(t: _Flat, i: int, out: list, states: dict) -> dict:
    """DFG.py DFG_python: append the data-flow edges under node i to `out` (sorted by token index, as DFG.py sorts
    each sub-result); returns the updated states."""
    kind = t.kind[i]
    if t.tok[i] is not None:
        idx, name = t.tok[i]
        if kind == name:
            return states
        if name in states:
            out.append((name, idx, "comesFrom", [name], list(states[name])))
        else:
            if kind == "identifier":
                states[name] = [idx]
            out.append((name, idx, "comesFrom", [], []))
        return states
    dfg, kids = [], t.kids[i]
    if kind == "default_parameter":
        name_node, value = t.field(i, "name"), t.field(i, "value")
        sources = [] if value is None else _variables(t, value)
        if value is not None:
            states = _dfg(t, value, dfg, states)
        for idx, name in _variables(t, name_node):
            if value is None:
                dfg.append((name, idx, "comesFrom", [], []))
            dfg += [(name, idx, "comesFrom", [s[1]], [s[0]]) for s in sources]
            states[name] = [idx]
    elif kind in ("assignment", "augmented_assignment"):
        if t.field(i, "right") is not None:  # else `x: int`, no edges
            states = _assign(t, *_sides(t, i), dfg, states)
    elif kind == "for_in_clause":
        states = _assign(t, [t.field(i, "left")], [kids[-1]], dfg, states)
    elif kind == "if_statement":
        current, branches, has_else = dict(states), [], False
        for child in kids:
            has_else = has_else or "else" in t.kind[child]
            if t.kind[child] in ("elif_clause", "else_clause"):
                branches.append(_dfg(t, child, dfg, dict(states)))
            else:
                current = _dfg(t, child, dfg, current)
        merged = {}
        for branch in branches + ([current] if has_else else [current, states]):
            for name, idxs in branch.items():
                merged[name] = merged[name] + idxs if name in merged else list(idxs)
        states = {name: sorted(set(idxs)) for name, idxs in merged.items()}
    elif kind in ("for_statement", "while_statement"):
        for _ in range(2):
            if kind == "while_statement":
                children = kids
            else:
                states = _assign(t, *_sides(t, i), dfg, states)
                # DFG.py quirk: a `for` whose last child is an else clause never walks its body
                children = kids[-1:] if t.kind[kids[-1]] == "block" else []
            for child in children:
                states = _dfg(t, child, dfg, states)
        out += _merge_loop(dfg)
        return states
    else:
        if t.comprehensions:  # DFG.py do_first_statement: the `for ... in` clauses go first
            kids = [c for c in kids if t.kind[c] == "for_in_clause"] + [c for c in kids if t.kind[c] != "for_in_clause"]
        for child in kids:
            states = _dfg(t, child, dfg, states)
    dfg.sort(key=_idx)
    out += dfg
    return states


def _analyse(code: str) -> tuple[list[str], Counter]:
    """Parse once, walk once: the subtree S-expressions for the syntax match and the normalised dataflow edges
    (codebleu dataflow_match.py get_data_flow + normalize_dataflow; variables renamed var_0, var_1, ... in order of
    appearance, so the match ignores identifier names)."""
    root = _parse(code)
    # syntax_match.py get_all_sub_trees: the S-expression of the root and of every node with children
    sexps, inner, stack = [str(root)], [], [(root, -1)]
    t, by_position, binders = _Flat(), {}, set()
    kinds, kids, nodes, los, leaves = t.kind, t.kids, t.node, t.lo, t.leaves
    lines = None if code.isascii() else code.split("\n")
    while stack:  # source order, as utils.py tree_to_token_index numbers the tokens
        node, parent = stack.pop()
        i, kind, n_children = len(kinds), node.type, node.child_count
        kinds.append(kind)
        kids.append([])
        nodes.append(node)
        los.append(len(leaves))
        if parent >= 0:
            kids[parent].append(i)
            if n_children:
                sexps.append(str(node))
        if (n_children == 0 or kind in ("string_literal", "string", "character_literal")) and kind != "comment":
            start, end = node.start_byte, node.end_byte
            if lines is None:  # ASCII: byte offsets are str offsets; lines are joined without their newlines
                text = code[start:end].replace("\n", "")
            else:  # utils.py index_to_code_token slices each str line with tree-sitter's *byte* columns
                (r0, c0), (r1, c1) = node.start_point, node.end_point
                text = lines[r0][c0:c1] if r0 == r1 else lines[r0][c0:] + "".join(lines[r0 + 1:r1]) + lines[r1][:c1]
            by_position[start, end] = (len(leaves), text)  # a repeated (zero-width) position keeps the later
            leaves.append(i)                                 # token, as index_to_code does
            if n_children:
                inner += node.children  # a string's parts still count as subtrees
        elif n_children:
            if kind in _BINDERS:
                binders.add(kind)
            stack += [(child, i) for child in reversed(node.children)]
    while inner:
        node = inner.pop()
        if node.child_count:
            sexps.append(str(node))
            inner.extend(node.children)
    t.tok = [None] * len(kinds)
    for j in leaves:
        t.tok[j] = by_position[nodes[j].start_byte, nodes[j].end_byte]
    t.hi = [0] * len(t.kind)
    for i in reversed(range(len(t.kind))):  # children come after their parent in pre-order
        t.hi[i] = t.hi[t.kids[i][-1]] if t.kids[i] else t.lo[i] + (t.tok[i] is not None)
    t.comprehensions = "for_in_clause" in binders
    return sexps, Counter(_dataflow(t, bool(binders)))


def _dataflow(t: _Flat, binds: bool) -> list[tuple]:
    if not binds:
        # Without assignments or loops an edge has parents only when an identifier's name recurs as a later
        # variable token; no such repeat means no edge survives get_data_flow's filter, so skip the walk.
        seen = Counter(t.tok[j][1] for j in t.leaves if t.kind[j] != t.tok[j][1])
        if not any(seen[t.tok[j][1]] > 1 for j in t.leaves if t.kind[j] == "identifier"):
            return []
    edges = []
    try:
        _dfg(t, 0, edges, {})
        edges.sort(key=_idx)
    except Exception:  # dataflow_match.py: any failure inside DFG_python means "no dataflow" for this snippet
        edges = []
    used = {e[1] for e in edges if e[4]} | {i for e in edges for i in e[4]}
    merged = {}
    for name, idx, rel, names, idxs in edges:
        if idx in used:
            old = merged.get(idx)
            merged[idx] = (name, idx, rel, _unique(old[3] + names), _unique(old[4] + idxs)) if old else \
                (name, idx, rel, names, idxs)
    rename, out = {}, []
    for name, _, rel, names, _ in merged.values():
        for n in names + [name]:
            rename.setdefault(n, f"var_{len(rename)}")
        out.append((rename[name], rel, tuple(rename[n] for n in names)))
    return out


# ----------------------------------------------------------------------------- CodeBLEU
@dataclass
class CodeBLEUCounts:
    """Match counts of one pair, or summed over a corpus: the reference micro-averages, so corpus CodeBLEU is
    computed from the summed counts, never by averaging pair scores. Lists hold n = 1..4."""
    ngram_match: list  # clipped candidate n-grams found in the reference (bleu.py modified_precision)
    ngram_total: list  # candidate n-grams, at least 1
    weighted_match: list  # the same overlap, unigrams weighted 1 (keyword) or 0.2 (weighted_ngram_match.py)
    weighted_total: list  # *reference* n-grams, weighted alike, at least 1: a recall
    hyp_len: int  # candidate tokens
    ref_len: int  # reference tokens
    pairs: int  # weighted_ngram_match.py's brevity penalty counts each reference as 2 tokens (see below)
    syntax_match: int  # reference subtrees found among the candidate's
    syntax_total: int  # reference subtrees
    dataflow_match: int  # normalised reference dataflow edges matched one-to-one in the candidate
    dataflow_total: int  # normalised reference dataflow edges

    def __add__(self, other: CodeBLEUCounts) -> CodeBLEUCounts:
        return CodeBLEUCounts(*(  # element-wise, in pair order, like the reference's running Counters
            [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b
            for a, b in zip(vars(self).values(), vars(other).values())))


def _codebleu_counts(reference: str, candidate: str, tokenize, cache: dict) -> CodeBLEUCounts:
    ref, hyp = reference.strip(), candidate.strip()  # codebleu.py strips both before anything else
    ref_toks, hyp_toks = tokenize(ref), tokenize(hyp)
    trees = []
    for code in (strip_comments_and_docstrings(ref), strip_comments_and_docstrings(hyp)):
        if code not in cache:
            cache[code] = _analyse(code)
        trees.append(cache[code])
    (ref_sexps, ref_flow), (hyp_sexps, hyp_flow) = trees
    hyp_set = set(hyp_sexps)
    # syntax_match.py counts *reference* subtrees found anywhere in the candidate (its own TODO says the paper
    # counts candidate subtrees); dataflow_match.py matches normalised edges one-to-one
    return CodeBLEUCounts(*_ngram_counts(ref_toks, hyp_toks), hyp_len=len(hyp_toks), ref_len=len(ref_toks), pairs=1,
                          syntax_match=sum(s in hyp_set for s in ref_sexps), syntax_total=len(ref_sexps),
                          dataflow_match=sum((ref_flow & hyp_flow).values()), dataflow_total=sum(ref_flow.values()))


def _codebleu_score(c: CodeBLEUCounts, weights, tokenizer: str) -> dict:
    scores = {
        "ngram_match": _nltk_bleu(c.ngram_match, c.ngram_total, c.hyp_len, c.ref_len),
        # weighted_ngram_match.py quirk: its brevity penalty takes len() of each [tokens, weights] reference entry,
        # so every reference counts as 2 tokens long; only short candidates (< 2 tokens on average) are penalised
        "weighted_ngram_match": _nltk_bleu(c.weighted_match, c.weighted_total, c.hyp_len, 2 * c.pairs),
        "syntax_match": c.syntax_match / c.syntax_total,
        # dataflow_match.py: no reference dataflow at all -> 0 (with a warning)
        "dataflow_match": c.dataflow_match / c.dataflow_total if c.dataflow_total else 0.0,
    }
    alpha, beta, gamma, theta = weights
    # codebleu.py `theta * (dataflow_match_score or 1)`: a dataflow score of 0 -- no reference dataflow, or simply
    # no matching edge -- counts as 1 in the total. Kept for parity; `dataflow_match` itself still reports 0.
    scores["codebleu"] = (alpha * scores["ngram_match"] + beta * scores["weighted_ngram_match"]
                          + gamma * scores["syntax_match"] + theta * (scores["dataflow_match"] or 1))
    return {key: scores[key] for key in CODEBLEU_KEYS} | {"tokenizer": tokenizer}


def codebleu_counts(references: list[str], candidates: list[str], tokenizer: str = "whitespace") -> list:
    """One CodeBLEUCounts per pair (sum them for the corpus); codebleu_from_counts turns either into scores."""
    _check_pairs(references, candidates)
    tokenize, cache = _tokenizer(tokenizer), {}  # cache: each distinct snippet is parsed and analysed once
    return [_codebleu_counts(r, c, tokenize, cache) for r, c in zip(references, candidates)]


def codebleu_from_counts(counts: CodeBLEUCounts | list, weights=(0.25, 0.25, 0.25, 0.25),
                         tokenizer: str = "whitespace") -> dict:
    total = functools.reduce(operator.add, counts) if isinstance(counts, list) else counts
    return _codebleu_score(total, weights, tokenizer)


def _check_pairs(references, candidates) -> None:
    if isinstance(references, str) or isinstance(candidates, str):
        raise TypeError("references and candidates must be lists of strings, not a single string")
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} references but {len(candidates)} candidates")
    if not references:
        raise ValueError("no (reference, candidate) pairs to score")


def codebleu_per_example(references: list[str], candidates: list[str], weights=(0.25, 0.25, 0.25, 0.25),
                         tokenizer: str = "whitespace", corpus: bool = False):
    """Sentence-level CodeBLEU dicts, one per pair (for a paired bootstrap); with corpus=True also the corpus dict."""
    counts = codebleu_counts(references, candidates, tokenizer)
    per = [_codebleu_score(c, weights, tokenizer) for c in counts]
    return (per, codebleu_from_counts(counts, weights, tokenizer)) if corpus else per


def codebleu(references: list[str], candidates: list[str], weights=(0.25, 0.25, 0.25, 0.25),
             tokenizer: str = "whitespace") -> dict:
    """Corpus CodeBLEU = a*ngram + b*weighted ngram + g*syntax + t*dataflow, micro-averaged over pairs like
    codebleu 0.7.0 `calc_codebleu(refs, preds, lang="python")`. Keys: CODEBLEU_KEYS + `tokenizer` (whitespace,
    the reference's default, or conala = tokenize_for_bleu_eval, which scores raw snippets like `f(x)` fairly)."""
    return codebleu_from_counts(codebleu_counts(references, candidates, tokenizer), weights, tokenizer)


def sentence_codebleu(reference: str, candidate: str, weights=(0.25, 0.25, 0.25, 0.25),
                      tokenizer: str = "whitespace") -> dict:
    return codebleu([reference], [candidate], weights, tokenizer)


# ----------------------------------------------------------------------------- RUBY
def _ruby_tree(root, vocab: dict) -> tuple[list[int], list[int]]:
    """Post-order labels and leftmost-leaf indices of the tree RUBY compares. Labelling (our choice, documented):
    named nodes labelled by type, leaves by type plus text (`identifier:x`, `integer:1`); a string literal is one
    leaf labelled by its text; anonymous tokens kept only when they fill a field (`+`, `not in`, `and`), since an
    AST keeps the operator but not the punctuation; comments and other extras dropped."""
    labels, lml = [], []
    stack = [[root, _ruby_children(root), 0, None]]  # node, kept children, next child, leftmost leaf index
    while stack:  # iterative post-order: deep expressions must not hit the recursion limit
        top = stack[-1]
        node, children, next_child, first = top
        if next_child < len(children):
            top[2] += 1
            stack.append([children[next_child], _ruby_children(children[next_child]), 0, None])
            continue
        stack.pop()
        leaf = node.is_named and not children
        label = f"{node.type}:{node.text.decode('utf-8', 'replace')}" if leaf else node.type
        first = len(labels) if first is None else first
        labels.append(vocab.setdefault(label, len(vocab)))
        lml.append(first)
        if stack and stack[-1][3] is None:
            stack[-1][3] = first
    return labels, lml


def _ruby_children(node) -> list:
    if not node.is_named or node.type == "string" or node.named_child_count == 0:
        return []
    return [child for i, child in enumerate(node.children)
            if not child.is_extra and (child.is_named or node.field_name_for_child(i) is not None)]


def _zhang_shasha(labels1: list, lml1: list[int], labels2: list, lml2: list[int]) -> int:
    """Exact unit-cost tree edit distance (Zhang & Shasha 1989) from post-order labels and leftmost-leaf indices.
    O(|T1| |T2| min(depth, leaves)^2); plain lists, since the trees here have < 200 nodes."""
    n, m = len(labels1), len(labels2)
    if not n or not m:
        return n + m
    keyroots1 = sorted({lml1[i]: i for i in range(n)}.values())  # the highest node of each leftmost-leaf path
    keyroots2 = sorted({lml2[j]: j for j in range(m)}.values())
    tree_dist = [[0] * m for _ in range(n)]
    for i in keyroots1:
        li = lml1[i]
        for j in keyroots2:
            lj = lml2[j]
            cols = j - lj + 2
            prev = list(range(cols))  # forest distance from the empty forest: insert everything
            rows = [prev]
            for x in range(1, i - li + 2):
                i1 = li + x - 1
                whole1, skip1, label1, dist_i1 = lml1[i1] == li, lml1[i1] - li, labels1[i1], tree_dist[i1]
                cur = [x] + [0] * (cols - 1)
                for y in range(1, cols):
                    j1 = lj + y - 1
                    best = min(prev[y], cur[y - 1]) + 1  # delete / insert
                    if whole1 and lml2[j1] == lj:  # both forests are whole trees: relabel the roots
                        best = min(best, prev[y - 1] + (label1 != labels2[j1]))
                        dist_i1[j1] = best
                    else:  # match the two rightmost trees as a whole (their distance is already known)
                        best = min(best, rows[skip1][lml2[j1] - lj] + dist_i1[j1])
                    cur[y] = best
                rows.append(cur)
                prev = cur
    return tree_dist[n - 1][m - 1]


def tree_edit_distance(tree1, tree2) -> int:
    """Zhang-Shasha distance between nested `(label, [children])` trees (used by the tests)."""
    def arrays(tree):
        labels, lml = [], []

        def visit(node):
            first = None
            for child in node[1]:
                leaf = visit(child)
                first = leaf if first is None else first
            labels.append(node[0])
            lml.append(len(labels) - 1 if first is None else first)
            return lml[-1]
        visit(tree)
        return labels, lml
    return _zhang_shasha(*arrays(tree1), *arrays(tree2))


def _levenshtein(a: list, b: list) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _ruby(reference: str, candidate: str, cache: dict | None = None) -> tuple[float, str]:
    ref_root, hyp_root = _parse(reference, cache), _parse(candidate, cache)
    if ref_root.has_error or hyp_root.has_error:
        # Tran et al. 2019 STS: token edit distance when a tree is unavailable (tranX tokens, like codegen-metrics)
        ref, hyp = conala_tokens(reference), conala_tokens(candidate)
        if not ref and not hyp:
            return 1.0, "string"
        return 1.0 - _levenshtein(ref, hyp) / max(len(ref), len(hyp)), "string"
    vocab = {}
    t1, t2 = _ruby_tree(ref_root, vocab), _ruby_tree(hyp_root, vocab)
    # Tran et al. 2019 TRS: 1 - TED / (|T_ref| + |T_cand|), in [0, 1] since TED <= |T_ref| + |T_cand|
    return 1.0 - _zhang_shasha(*t1, *t2) / (len(t1[0]) + len(t2[0])), "tree"


def ruby(reference: str, candidate: str) -> float:
    """RUBY (Tran et al. 2019) without its PDG level: tree similarity when both sides parse cleanly, else string."""
    return _ruby(reference, candidate)[0]


def ruby_level(reference: str, candidate: str) -> str:
    """Which RUBY level `ruby` used: "tree" or "string"."""
    return "tree" if not (_parse(reference).has_error or _parse(candidate).has_error) else "string"


# ----------------------------------------------------------------------------- BLEU, ROUGE-L, BERTScore
def rouge_l(reference: str, candidate: str) -> float:
    """rouge-score 0.1.2 _score_lcs F-measure on tranX tokens (rouge-score's own tokenizer drops punctuation)."""
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

    _check_pairs(references, candidates)
    return sacrebleu.corpus_bleu(list(candidates), [list(references)]).score / 100


def conala_bleu(references: list[str], candidates: list[str]) -> float:
    """conala-baseline eval/conala_eval.py: tokenize_for_bleu_eval, then the tensorflow/nmt compute_bleu with
    smooth=False: corpus BLEU-4, clipped n-gram precisions, geometric mean, brevity penalty exp(1 - r/c) if c <= r."""
    _check_pairs(references, candidates)
    matches, possible, ref_len, hyp_len = [0] * 4, [0] * 4, 0, 0
    for reference, candidate in zip(references, candidates):
        ref, hyp = conala_tokens(reference), conala_tokens(candidate)
        ref_len, hyp_len = ref_len + len(ref), hyp_len + len(hyp)
        for n in range(1, 5):
            matches[n - 1] += sum((_ngrams(hyp, n) & _ngrams(ref, n)).values())
            possible[n - 1] += max(0, len(hyp) - n + 1)
    precisions = [m / p if p > 0 else 0.0 for m, p in zip(matches, possible)]
    if min(precisions) <= 0:  # also covers an empty corpus, where compute_bleu would divide by zero
        return 0.0
    geo_mean = math.exp(sum(0.25 * math.log(p) for p in precisions))
    ratio = hyp_len / ref_len
    return geo_mean * (1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio))


def bertscore_details(references: list[str], candidates: list[str], model: str = EMBEDDED_ENCODER,
                      num_layers: int | None = None, batch_size: int = 64) -> dict:
    """BERTScore (Zhang et al. 2020) via `bert_score.score`, offline. `model` is a models.py spec (embedded:...,
    tiny:bert), a folder or a hub id; num_layers=None uses the model's last layer. Returns the mean F1 (`bertscore`),
    precision, recall, and the model and layer used, so reports name their encoder."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import bert_score

    import models

    _check_pairs(references, candidates)
    path = models.encoder_path(model)
    if num_layers is None:
        config_file = Path(path) / "config.json"
        num_layers = json.loads(config_file.read_text())["num_hidden_layers"] if config_file.exists() else None
        if num_layers is None:
            raise ValueError(f"bertscore: give num_layers for {model!r} (no local config.json to read it from)")
    precision, recall, f1 = bert_score.score(list(candidates), list(references), model_type=path,
                                             num_layers=num_layers, batch_size=batch_size, verbose=False)
    return {"bertscore": f1.mean().item(), "bertscore_precision": precision.mean().item(),
            "bertscore_recall": recall.mean().item(), "bertscore_model": model, "bertscore_layers": num_layers,
            "bertscore_per_example": f1.tolist()}


def bertscore(references: list[str], candidates: list[str], model: str = EMBEDDED_ENCODER,
              num_layers: int | None = None) -> float:
    return bertscore_details(references, candidates, model, num_layers)["bertscore"]


# ----------------------------------------------------------------------------- everything at once
def evaluate(references: list[str], candidates: list[str], *, codebleu_tokenizer: str = "whitespace",
             with_bertscore: bool = True, bertscore_model: str = EMBEDDED_ENCODER,
             bertscore_layers: int | None = None, per_example: bool = False) -> dict:
    """All metrics on 0-1 scales. Corpus metrics: codebleu (+ its four parts), bleu, conala_bleu; means over pairs:
    rouge_l, ruby, syntax_valid_rate (candidates tree-sitter parses cleanly), exact_match. per_example=True adds
    `per_example` lists (codebleu, ruby, rouge_l, syntax_valid) for a paired bootstrap."""
    _check_pairs(references, candidates)
    per_cb, corpus_cb = codebleu_per_example(references, candidates, tokenizer=codebleu_tokenizer, corpus=True)
    cache = {}
    rubies = [_ruby(r, c, cache) for r, c in zip(references, candidates)]
    rouges = [rouge_l(r, c) for r, c in zip(references, candidates)]
    valid = [not _parse(c, cache).has_error for c in candidates]
    n = len(references)
    out = {"n": n} | {k: corpus_cb[k] for k in CODEBLEU_KEYS} | {"codebleu_tokenizer": codebleu_tokenizer}
    out |= {"bleu": bleu(references, candidates), "conala_bleu": conala_bleu(references, candidates),
            "rouge_l": sum(rouges) / n, "ruby": sum(r for r, _ in rubies) / n,
            "ruby_tree_fraction": sum(level == "tree" for _, level in rubies) / n,
            "syntax_valid_rate": sum(valid) / n,
            "exact_match": sum(r.strip() == c.strip() for r, c in zip(references, candidates)) / n}
    if with_bertscore:
        details = bertscore_details(references, candidates, bertscore_model, bertscore_layers)
        out |= {k: details[k] for k in ("bertscore", "bertscore_model", "bertscore_layers")}
    if per_example:
        out["per_example"] = {"codebleu": [d["codebleu"] for d in per_cb], "ruby": [r for r, _ in rubies],
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
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e.strerror if isinstance(e, OSError) else e})") from None
    references, predictions = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {number}: expected an object with 'reference' and 'prediction'")
        for key, bucket in (("reference", references), ("prediction", predictions)):
            if key not in record:
                raise InputError(f"{path}: line {number}: missing key {key!r}")
            if not isinstance(record[key], str):
                raise InputError(f"{path}: line {number}: {key!r} must be a string, not {type(record[key]).__name__}")
            bucket.append(record[key])
    if not references:
        raise InputError(f"{path}: no records (the file is empty)")
    return references, predictions


def format_table(result: dict) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in result.items() if k != "per_example"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Score PRED.jsonl (lines of {reference, prediction}) with every metric.")
    p.add_argument("predictions", help="JSONL file with 'reference' and 'prediction' on each line")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--codebleu-tokenizer", choices=TOKENIZERS, default="whitespace")
    p.add_argument("--no-bertscore", action="store_true", help="skip BERTScore (it loads an encoder)")
    p.add_argument("--bertscore-model", default=EMBEDDED_ENCODER)
    p.add_argument("--bertscore-layers", type=int, default=None)
    p.add_argument("--per-example", action="store_true", help="include per-example lists in --out")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        references, predictions = load_predictions(args.predictions)
        result = evaluate(references, predictions, codebleu_tokenizer=args.codebleu_tokenizer,
                          with_bertscore=not args.no_bertscore, bertscore_model=args.bertscore_model,
                          bertscore_layers=args.bertscore_layers, per_example=args.per_example)
        print(format_table(result))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

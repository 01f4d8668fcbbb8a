"""CodeBLEU's per-pair match counts (Ren et al. 2020): the n-gram and keyword-weighted n-gram
matches, and on tree-sitter the syntax match (AST subtrees) and the dataflow match (variable
data-flow graph).

  ngram_counts                   one pair's n-gram and weighted n-gram numerators/denominators,
                                 n = 1..4
  tree_match_counts              one pair's (syntax match, syntax total, dataflow match, dataflow
                                 total)
  parse / syntax_valid           tree-sitter-python through one cached parser; also used by RUBY
                                 and `evaluate`
  strip_comments_and_docstrings  codebleu parser/utils.py, run before the syntax and dataflow
                                 matches

A port of codebleu 0.7.0 (k4black's port of the CodeXGLUE evaluator): bleu.py,
weighted_ngram_match.py, syntax_match.py and dataflow_match.py, quirks included; its parser/DFG.py
is ported in codebleu_dfg.py. It lives apart from codebleu_score.py, which sums these counts and
weighs them into CodeBLEU. Same numbers, less work: each distinct snippet is parsed, printed and
walked once per corpus (the reference parses every pair twice and prints every subtree separately),
and a candidate's dataflow is built only when its reference has one. Named codebleu_ts, not
codebleu, so it never shadows the PyPI `codebleu` package that bench/metrics_bench.py compares
against. Import is instant: tree_sitter is imported on the first parse.
"""
from __future__ import annotations

import functools
import io
import re
import tokenize as pytokenize
from collections import Counter

from codebleu_dfg import dataflow

# utils.py: one token, however many children
_STRING_KINDS = ("string_literal", "string", "character_literal")
# codebleu 0.7.0 keywords/python.txt: these tokens weigh 1 in the weighted n-gram match, all
# others 0.2
PYTHON_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except "
    "finally for from global if import in is lambda nonlocal not or pass raise return try while "
    "with yield match case type".split())


# ----------------------------------------------------------------------------- n-gram matches
def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def ngram_counts(ref: list[str], hyp: list[str]) -> tuple[list, list, list, list]:
    """Per-pair numerators/denominators for n=1..4 of (a) BLEU's clipped precision (codebleu bleu.py
    modified_precision) and (b) the keyword-weighted match, which despite its name divides by the
    *reference* counts, i.e. is a recall (codebleu weighted_ngram_match.py modified_recall). Both
    clip to the same overlap."""
    ref_c, hyp_get = Counter(ref), Counter(hyp).get
    # unigrams weigh 1 (keyword) or 0.2; summed in the reference's order so floats agree bit for bit
    overlap = wnum = wden = 0
    for g, c in ref_c.items():
        w = 1 if g in PYTHON_KEYWORDS else 0.2
        clipped = min(c, hyp_get(g, 0))
        overlap += clipped
        wnum += clipped * w
        wden += c * w
    # max(1, .): as in the reference, an order too long for the text counts 0/1
    nums, dens, wnums, wdens = [overlap], [max(1, len(hyp))], [wnum], [max(1, wden)]
    hyp_grams, ref_grams = _bi_tri_four_grams(hyp), _bi_tri_four_grams(ref)
    for n in range(2, 5):
        overlap = _clipped_overlap(hyp_grams[n - 2], ref_grams[n - 2])
        nums.append(overlap), dens.append(max(1, len(hyp) - n + 1))
        wnums.append(overlap), wdens.append(max(1, len(ref) - n + 1))
    return nums, dens, wnums, wdens


def _bi_tri_four_grams(tokens: list[str]) -> tuple[list, list, list]:
    t1, t2, t3 = tokens[1:], tokens[2:], tokens[3:]
    return list(zip(tokens, t1)), list(zip(tokens, t1, t2)), list(zip(tokens, t1, t2, t3))


def _clipped_overlap(hyp: list, ref: list) -> int:
    """sum over n-grams g of min(count in hyp, count in ref); through sets, as n-grams seldom repeat
    in a snippet."""
    if not hyp or not ref:
        return 0
    hyp_set, ref_set = set(hyp), set(ref)
    common = hyp_set & ref_set
    # one side without repeats: each
    if not common or len(hyp_set) == len(hyp) or len(ref_set) == len(ref):
        # common n-gram counts once
        return len(common)
    hyp_c, ref_c = Counter(hyp), Counter(ref)
    return sum(min(hyp_c[g], ref_c[g]) for g in common)


# ----------------------------------------------------------------------------- tree-sitter
@functools.lru_cache(maxsize=1)
def _parser():
    import tree_sitter
    import tree_sitter_python

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


# tree-sitter parses 20,000 nested parentheses, but printing or walking that tree recurses in C and
# segfaults (exit 139). CPython itself refuses 200 nested parentheses, so deeper code stands in as
# one syntax error, and the metrics fall back as for code that does not parse (RUBY's string level,
# no syntax or dataflow match).
MAX_TREE_DEPTH = 1000
TOO_DEEP = "("  # an unclosed parenthesis: a tiny tree with has_error


def tree_depth_over(root, limit: int) -> bool:
    """Is any node deeper than `limit`? Iterative (a TreeCursor), and it stops at the first one."""
    cursor, depth = root.walk(), 0
    while True:
        if depth > limit:
            return True
        if cursor.goto_first_child():
            depth += 1
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return False
            depth -= 1


def parse(code: str, cache: dict | None = None):
    """Root node of `code`, or of TOO_DEEP when its tree is deeper than MAX_TREE_DEPTH; `cache` (one
    dict per call) parses each distinct string once."""
    if cache is not None and code in cache:
        return cache[code]
    root = _parser().parse(code.encode("utf-8")).root_node  # a Node keeps its Tree alive
    # ~3 levels a character at most
    if 3 * len(code) + 8 > MAX_TREE_DEPTH and tree_depth_over(root, MAX_TREE_DEPTH):
        root = _parser().parse(TOO_DEEP.encode()).root_node
    if cache is not None:
        cache[code] = root
    return root


def syntax_valid(code: str, cache: dict | None = None) -> bool:
    """tree-sitter parses `code` without ERROR or MISSING nodes. Blank code is not valid: ast.parse
    accepts the empty program, but as an answer it is no code at all (the annotator's syntax signal,
    feedback.py, says 0 too)."""
    return bool(code.strip()) and not parse(code, cache).has_error


def strip_comments_and_docstrings(code: str) -> str:
    """codebleu parser/utils.py remove_comments_and_docstrings, applied before the syntax and
    dataflow matches. Quirks kept: a string token that starts a logical line (or the snippet) counts
    as a docstring and is dropped, so `'-'.join(x)` becomes `.join(x)`; code the tokenizer rejects
    (unbalanced brackets) is returned unchanged. Uses Python's own tokenizer, so results follow the
    running Python (the golden values were made on 3.11)."""
    if _nothing_to_strip(code):
        return code
    return _strip_with_tokenize(code)


def _nothing_to_strip(code: str) -> bool:
    """True when the token-by-token rebuild below would return `code` itself: no comment, no string
    that starts a line (the only strings it drops), no blank line, continuation or tab/CR/FF (whose
    spacing it rewrites)."""
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
    except Exception:
        # TokenError, IndentationError, ...: the reference catches everything and keeps the code
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


# ---------------------------------------------------------------------------- subtree S-expressions
def _sexp_spans(text: str) -> tuple[list[int], list[int]]:
    """Start and end offsets in `text` = str(root) of every node tree-sitter prints, in pre-order. A
    node prints the same alone as inside its parent (tree-sitter subtree.c
    ts_subtree__write_to_string puts a field label *before* the child's parenthesis), so one
    str(root) holds every str(node) as a slice: printing each node on its own, as syntax_match.py
    does, is quadratic. MISSING leaves are left out: a hidden one (`_newline`) prints, but is no
    node of the Python API."""
    # quoted characters: (UNEXPECTED ')'), (MISSING ")")
    if "'" in text or '"' in text or "MISSING" in text:
        return _sexp_spans_quoted(text)
    # after each "(": a node's name, the ")"s that close nodes, then a field label
    pieces = text.split("(")
    starts, ends, open_, pos = [], [0] * (len(pieces) - 1), [], len(pieces[0])
    for piece in pieces[1:]:
        open_.append(len(starts))
        starts.append(pos)
        closes = piece.count(")")
        if closes:
            end = pos + 2 + piece.index(")")  # one piece's ")"s are consecutive
            for _ in range(closes):
                ends[open_.pop()] = end
                end += 1
        pos += len(piece) + 1
    return starts, ends


def _sexp_spans_quoted(text: str) -> tuple[list[int], list[int]]:
    starts, ends, open_ = [], [], []
    for m in _sexp_token().finditer(text):
        c = m.group()
        if c[0] == "(":
            open_.append(None if c.startswith("(MISSING") else len(starts))
            if open_[-1] is not None:
                starts.append(m.start()), ends.append(0)
        elif c == ")":
            j = open_.pop()
            if j is not None:
                ends[j] = m.end()
    return starts, ends


@functools.lru_cache(maxsize=1)
def _sexp_token():
    # subtree.c: (MISSING name), (MISSING "name") for an unnamed token, (UNEXPECTED 'c') with \0 \n
    # \t \r escaped
    return re.compile(r"""\(MISSING (?:"(?:[^"]|"(?!\)))*"|)|[()]|'\\[0ntr]'|'.'""")


def _walk(root, text: str) -> tuple[list[str], list]:
    """One pre-order walk: syntax_match.py get_all_sub_trees' str() of the root and of every node
    with children (as slices of `text` = str(root)), and the nodes that are dataflow tokens
    (utils.py tree_to_token_index: a leaf but no comment, or a whole string literal -- whose parts
    are subtrees, but no tokens)."""
    (starts, ends), printed, check_missing = _sexp_spans(text), 0, root.has_error
    sexps, token_nodes, in_string = [text], [], 0
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None:  # the end of a string's subtree
            in_string -= 1
            continue
        if node.child_count:
            if node.is_named:  # printed in `text`: its str() is the matching slice
                if printed:
                    sexps.append(text[starts[printed]:ends[printed]])
                printed += 1
            else:  # an unnamed node with children (`not in`) is printed only on its own
                sexps.append(str(node))
            if not in_string and node.type in _STRING_KINDS:
                token_nodes.append(node)
                in_string += 1
                stack.append(None)
            stack += reversed(node.children)
        else:
            if node.is_named and not (check_missing and node.is_missing):
                printed += 1
            if not in_string and node.type != "comment":
                token_nodes.append(node)
    return sexps, token_nodes


# ---------------------------------------------------------------------- syntax and dataflow matches
class _Snippet:
    """One snippet, stripped, parsed, printed and walked once per corpus. Its dataflow is computed
    only when asked for: a candidate's is needed only when its reference has dataflow at all (about
    half of CoNaLa's have none)."""
    __slots__ = ("sexps", "_sexp_set", "_flow", "_pending")

    def __init__(self, code: str):
        code = strip_comments_and_docstrings(code)
        root = parse(code)
        text = str(root)
        self.sexps, token_nodes = _walk(root, text)
        self._sexp_set, self._flow, self._pending = None, None, (code, root, text, token_nodes)

    @property
    def sexp_set(self) -> set:
        if self._sexp_set is None:
            self._sexp_set = set(self.sexps)
        return self._sexp_set

    @property
    def flow(self) -> Counter:
        """Normalised dataflow edges (dataflow_match.py get_data_flow + normalize_dataflow:
        variables renamed var_0, var_1, ... in order of appearance, so the match ignores identifier
        names)."""
        if self._flow is None:
            self._flow, self._pending = dataflow(*self._pending), None
        return self._flow


def tree_match_counts(reference: str, candidate: str, cache: dict) -> tuple[int, int, int, int]:
    """(syntax match, syntax total, dataflow match, dataflow total) of one pair, comments and
    docstrings stripped first. `cache` (one dict per corpus) analyses each distinct snippet once."""
    for code in (reference, candidate):
        if code not in cache:
            cache[code] = _Snippet(code)
    ref, hyp = cache[reference], cache[candidate]
    # syntax_match.py counts *reference* subtrees found anywhere in the candidate (its own TODO says
    # the paper counts candidate subtrees); dataflow_match.py matches normalised edges one-to-one
    hyp_set, ref_flow = hyp.sexp_set, ref.flow
    return (sum(s in hyp_set for s in ref.sexps), len(ref.sexps),
            sum((ref_flow & hyp.flow).values()) if ref_flow else 0, sum(ref_flow.values()))

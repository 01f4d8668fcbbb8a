"""CodeBLEU's per-pair match counts (Ren et al. 2020): the n-gram and keyword-weighted n-gram matches, and on
tree-sitter the syntax match (AST subtrees) and the dataflow match (variable data-flow graph).

  ngram_counts                   one pair's n-gram and weighted n-gram numerators/denominators, n = 1..4
  tree_match_counts              one pair's (syntax match, syntax total, dataflow match, dataflow total)
  parse / syntax_valid           tree-sitter-python through one cached parser; also used by RUBY and `evaluate`
  strip_comments_and_docstrings  codebleu parser/utils.py, run before the syntax and dataflow matches

A port of codebleu 0.7.0 (k4black's port of the CodeXGLUE evaluator): bleu.py, weighted_ngram_match.py,
syntax_match.py, dataflow_match.py and parser/DFG.py, quirks included. It lives apart from metrics.py, which sums
these counts and weighs them into CodeBLEU, because the DFG.py port alone is ~200 lines of reference-faithful
control flow. Named codebleu_ts, not codebleu, so it never shadows the PyPI `codebleu` package that
bench/metrics_bench.py compares against. Import is instant: tree_sitter is imported on the first parse.
"""
from __future__ import annotations

import functools
import io
import re
import tokenize as pytokenize
from collections import Counter

# codebleu 0.7.0 keywords/python.txt: these tokens weigh 1 in the weighted n-gram match, all others 0.2
PYTHON_KEYWORDS = frozenset(
    "False None True and as assert async await break class continue def del elif else except finally for from "
    "global if import in is lambda nonlocal not or pass raise return try while with yield match case type".split())


# ----------------------------------------------------------------------------- n-gram matches
def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(zip(*(tokens[i:] for i in range(n))))


def ngram_counts(ref: list[str], hyp: list[str]) -> tuple[list, list, list, list]:
    """Per-pair numerators/denominators for n=1..4 of (a) BLEU's clipped precision (codebleu bleu.py
    modified_precision) and (b) the keyword-weighted match, which despite its name divides by the *reference*
    counts, i.e. is a recall (codebleu weighted_ngram_match.py modified_recall). Both clip to the same overlap."""
    nums, dens, wnums, wdens = [], [], [], []
    for n in range(1, 5):
        hyp_c, ref_c = (Counter(hyp), Counter(ref)) if n == 1 else (ngrams(hyp, n), ngrams(ref, n))
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


# ----------------------------------------------------------------------------- tree-sitter
@functools.lru_cache(maxsize=1)
def _parser():
    import tree_sitter
    import tree_sitter_python

    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_python.language()))


def parse(code: str, cache: dict | None = None):
    """Root node of `code`; `cache` (one dict per call) parses each distinct string once."""
    if cache is not None and code in cache:
        return cache[code]
    root = _parser().parse(code.encode("utf-8")).root_node  # a Node keeps its Tree alive
    if cache is not None:
        cache[code] = root
    return root


def syntax_valid(code: str) -> bool:
    """tree-sitter parses `code` without ERROR or MISSING nodes (the empty program is valid, as for ast.parse)."""
    return not parse(code).has_error


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
    root = parse(code)
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


# ----------------------------------------------------------------------------- syntax and dataflow matches
def tree_match_counts(reference: str, candidate: str, cache: dict) -> tuple[int, int, int, int]:
    """(syntax match, syntax total, dataflow match, dataflow total) of one stripped pair. `cache` (one dict per
    corpus) analyses each distinct snippet once."""
    trees = []
    for code in (strip_comments_and_docstrings(reference), strip_comments_and_docstrings(candidate)):
        if code not in cache:
            cache[code] = _analyse(code)
        trees.append(cache[code])
    (ref_sexps, ref_flow), (hyp_sexps, hyp_flow) = trees
    hyp_set = set(hyp_sexps)
    # syntax_match.py counts *reference* subtrees found anywhere in the candidate (its own TODO says the paper
    # counts candidate subtrees); dataflow_match.py matches normalised edges one-to-one
    return (sum(s in hyp_set for s in ref_sexps), len(ref_sexps),
            sum((ref_flow & hyp_flow).values()), sum(ref_flow.values()))

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
    """sum over n-grams g of min(count in hyp, count in ref); through sets, as n-grams seldom repeat in a snippet."""
    if not hyp or not ref:
        return 0
    hyp_set, ref_set = set(hyp), set(ref)
    common = hyp_set & ref_set
    if not common or len(hyp_set) == len(hyp) or len(ref_set) == len(ref):  # one side without repeats: each
        return len(common)                                                    # common n-gram counts once
    hyp_c, ref_c = Counter(hyp), Counter(ref)
    return sum(min(hyp_c[g], ref_c[g]) for g in common)


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


# ----------------------------------------------------------------------------- subtree S-expressions
def _sexp_spans(text: str) -> tuple[list[int], list[int]]:
    """Start and end offsets in `text` = str(root) of every node tree-sitter prints, in pre-order. A node prints the
    same alone as inside its parent (tree-sitter subtree.c ts_subtree__write_to_string puts a field label *before*
    the child's parenthesis), so one str(root) holds every str(node) as a slice: printing each node on its own, as
    syntax_match.py does, is quadratic. MISSING leaves are left out: a hidden one (`_newline`) prints, but is no
    node of the Python API."""
    if "'" in text or '"' in text or "MISSING" in text:  # quoted characters: (UNEXPECTED ')'), (MISSING ")")
        return _sexp_spans_quoted(text)
    pieces = text.split("(")  # after each "(": a node's name, the ")"s that close nodes, then a field label
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
    # subtree.c: (MISSING name), (MISSING "name") for an unnamed token, (UNEXPECTED 'c') with \0 \n \t \r escaped
    return re.compile(r"""\(MISSING (?:"(?:[^"]|"(?!\)))*"|)|[()]|'\\[0ntr]'|'.'""")


def _walk(root, text: str) -> tuple[list[str], list]:
    """One pre-order walk: syntax_match.py get_all_sub_trees' str() of the root and of every node with children
    (as slices of `text` = str(root)), and the nodes that are dataflow tokens (utils.py tree_to_token_index: a
    leaf, or a whole string literal -- whose parts are subtrees, but no tokens; comments are dropped later)."""
    (starts, ends), printed, check_missing = _sexp_spans(text), 0, root.has_error
    sexps, token_nodes, in_string, string_ids = [text], [], 0, _string_ids()
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
            if node.kind_id in string_ids and not in_string:
                token_nodes.append(node)
                in_string += 1
                stack.append(None)
            stack += reversed(node.children)
        else:
            if node.is_named and not (check_missing and node.is_missing):
                printed += 1
            if not in_string:
                token_nodes.append(node)
    return sexps, token_nodes


@functools.lru_cache(maxsize=1)
def _string_ids() -> frozenset:
    language = _parser().language
    return frozenset(i for i in range(language.node_kind_count) if language.node_kind_for_id(i) in _STRING_KINDS)


# ----------------------------------------------------------------------------- dataflow (CodeXGLUE DFG_python)
# Ported from codebleu parser/DFG.py and parser/utils.py with the same control flow, so the same graphs. Edges are
# (name, token index, relation, parent names, parent indices). Three changes that leave results as they were:
# `states` (name -> indices where it was last set) is updated in place instead of copied at every node, with copies
# where an if/elif/else branches; a subtree without any of the _FLOW kinds below is one left-to-right scan of its
# tokens, which is what DFG.py's recursion comes to there; and where the reference merges parent lists with
# list(set(...)), whose order follows PYTHONHASHSEED, we keep first-occurrence order. That order names the
# normalised variables, so ours is deterministic and equals one of the reference's hash-seed outcomes.
_FLOW = ("assignment", "augmented_assignment", "for_in_clause", "for_statement", "while_statement",
         "default_parameter", "if_statement")  # DFG.py's special cases (a comprehension implies a for_in_clause)
_STRING_KINDS = ("string_literal", "string", "character_literal")  # utils.py: one token, however many children
_DONE = -3  # _structure's stack marker: the subtree of the node below is finished


@functools.lru_cache(maxsize=1)
def _flow_in_sexp():
    return re.compile(r"\((?:%s)[ )]" % "|".join(_FLOW))


class _Flat:
    """A snippet's tree flattened in pre-order for DFG.py, since tree-sitter re-creates node objects on every
    access. tokens[j] = (type, token index, text) of the j-th token, the index as DFG.py's index_to_code gives it.
    The structure, kept only when the tree has _FLOW kinds: node i has kind[i], kids[i], node[i], tokens lo[i]:hi[i]
    under it, and flow[i] = does its subtree hold a _FLOW kind."""
    __slots__ = ("tokens", "kind", "kids", "node", "lo", "hi", "flow", "comprehensions")

    def __init__(self, tokens: list):
        self.tokens, self.kind, self.kids, self.node, self.lo, self.hi, self.flow = tokens, [], [], [], [], [], []
        self.comprehensions = False  # any for_in_clause? (else no node needs its children reordered)

    def field(self, i: int, name: str):
        child = self.node[i].child_by_field_name(name)
        return None if child is None else next(c for c in self.kids[i] if self.node[c].id == child.id)


def _tokens(code: str, token_nodes: list) -> list[tuple]:
    """utils.py index_to_code_token for every token but comments: (type, token index, text)."""
    tokens, positions = [], []
    lines = None if code.isascii() else code.split("\n")
    for node in token_nodes:
        kind = node.type
        if kind == "comment":
            continue
        start, end = node.start_byte, node.end_byte
        if lines is None:  # ASCII: byte offsets are str offsets; lines are joined without their newlines
            text = code[start:end].replace("\n", "")
        else:  # utils.py slices each str line with tree-sitter's *byte* columns
            (r0, c0), (r1, c1) = node.start_point, node.end_point
            text = lines[r0][c0:c1] if r0 == r1 else lines[r0][c0:] + "".join(lines[r0 + 1:r1]) + lines[r1][:c1]
        tokens.append((kind, len(tokens), text))
        positions.append((start, end))
    if len(set(positions)) < len(positions):  # zero-width tokens at one position (MISSING nodes): DFG.py's
        last = {position: j for j, position in enumerate(positions)}  # index_to_code keeps the later index
        tokens = [(kind, last[position], text) for (kind, _, text), position in zip(tokens, positions)]
    return tokens


def _structure(t: _Flat, root) -> None:
    """Fill in t's tree structure, counting tokens as _walk finds them (a string is one token, a comment none)."""
    kinds, kids, nodes, los, his, up = t.kind, t.kids, t.node, t.lo, t.hi, []
    stack, parents, n_tokens, string_ids = [root], [-1], 0, _string_ids()
    while stack:
        node, parent = stack.pop(), parents.pop()
        if parent == _DONE:  # `node` is the index of a node whose subtree has been walked
            his[node] = n_tokens
            continue
        i, kind, n_children = len(kinds), node.type, node.child_count
        kinds.append(kind), kids.append([]), nodes.append(node), los.append(n_tokens), his.append(0), up.append(parent)
        if parent >= 0:
            kids[parent].append(i)
        if n_children == 0 or node.kind_id in string_ids:
            n_tokens += kind != "comment"
            his[i] = n_tokens
        else:
            stack.append(i), parents.append(_DONE)
            stack += reversed(node.children)
            parents += [i] * n_children
    t.flow = [False] * len(kinds)
    for i, kind in enumerate(kinds):
        if kind in _FLOW:
            while i >= 0 and not t.flow[i]:  # mark the node and its ancestors
                t.flow[i], i = True, up[i]
    t.comprehensions = "for_in_clause" in kinds


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _variables(t: _Flat, i: int) -> list[tuple]:
    """utils.py tree_to_variable_index: (index, text) of the tokens under i whose text differs from their type."""
    return [(idx, text) for kind, idx, text in t.tokens[t.lo[i]:t.hi[i]] if kind != text]


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


def _scan(tokens: list, out: list, states: dict) -> dict:
    """DFG.py on tokens: a variable comesFrom where its name was last set; a new identifier sets its name. Text
    equal to the type (keywords, operators) is no variable."""
    dfg = []
    for kind, idx, name in tokens:
        if kind == name:
            continue
        if name in states:
            dfg.append((name, idx, "comesFrom", [name], list(states[name])))
        else:
            if kind == "identifier":
                states[name] = [idx]
            dfg.append((name, idx, "comesFrom", [], []))
    dfg.sort(key=_idx)  # a no-op unless zero-width tokens share an index
    out += dfg
    return states


def _dfg(t: _Flat, i: int, out: list, states: dict) -> dict:
    """DFG.py DFG_python: append the data-flow edges under node i to `out` (sorted by token index, as DFG.py sorts
    each sub-result); returns the updated states."""
    if not t.flow[i]:
        return _scan(t.tokens[t.lo[i]:t.hi[i]], out, states)
    kind, dfg, kids = t.kind[i], [], t.kids[i]
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


def _edges(code: str, root, text: str, token_nodes: list) -> list[tuple]:
    """DFG.py DFG_python over the whole snippet, sorted by token index (dataflow_match.py get_data_flow)."""
    structure = _flow_in_sexp().search(text) is not None  # every _FLOW kind is a named node, so it prints
    t, edges = _Flat(_tokens(code, token_nodes)), []
    if structure:
        _structure(t, root)
    try:
        if structure:
            _dfg(t, 0, edges, {})
        else:
            _scan(t.tokens, edges, {})
        edges.sort(key=_idx)
    except Exception:  # dataflow_match.py: any failure inside DFG_python means "no dataflow" for this snippet
        edges = []
    return edges


def _normalise(edges: list[tuple]) -> list[tuple]:
    """dataflow_match.py get_data_flow's filter (keep the edges that take part in a flow) and normalize_dataflow."""
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
class _Snippet:
    """One snippet, stripped, parsed, printed and walked once per corpus. Its dataflow is computed only when asked
    for: a candidate's is needed only when its reference has dataflow at all (about half of CoNaLa's have none)."""
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
        """Normalised dataflow edges (dataflow_match.py get_data_flow + normalize_dataflow: variables renamed var_0,
        var_1, ... in order of appearance, so the match ignores identifier names)."""
        if self._flow is None:
            self._flow, self._pending = Counter(_normalise(_edges(*self._pending))), None
        return self._flow


def tree_match_counts(reference: str, candidate: str, cache: dict) -> tuple[int, int, int, int]:
    """(syntax match, syntax total, dataflow match, dataflow total) of one pair, comments and docstrings stripped
    first. `cache` (one dict per corpus) analyses each distinct snippet once."""
    for code in (reference, candidate):
        if code not in cache:
            cache[code] = _Snippet(code)
    ref, hyp = cache[reference], cache[candidate]
    # syntax_match.py counts *reference* subtrees found anywhere in the candidate (its own TODO says the paper
    # counts candidate subtrees); dataflow_match.py matches normalised edges one-to-one
    hyp_set, ref_flow = hyp.sexp_set, ref.flow
    return (sum(s in hyp_set for s in ref.sexps), len(ref.sexps),
            sum((ref_flow & hyp.flow).values()) if ref_flow else 0, sum(ref_flow.values()))

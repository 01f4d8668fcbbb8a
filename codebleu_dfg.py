"""CodeBLEU's dataflow match graph: a port of the CodeXGLUE DFG_python extractor (codebleu 0.7.0
parser/DFG.py and parser/utils.py) with its normalisation (dataflow_match.py), on a
tree-sitter-python tree.

  dataflow  one snippet's normalised edges, as a Counter; codebleu_ts.tree_match_counts matches
            two of them

It lives apart from codebleu_ts.py because this port alone is ~250 lines of reference-faithful
control flow. Import is instant.
"""
from __future__ import annotations

import functools
import re
from collections import Counter

# Ported from codebleu parser/DFG.py and parser/utils.py with the same control flow, so the same
# graphs. Edges are (name, token index, relation, parent names, parent indices). Three changes that
# leave results as they were: `states` (name -> indices where it was last set) is updated in place
# instead of copied at every node, with copies where an if/elif/else branches; a subtree without any
# of the _FLOW kinds below is one left-to-right scan of its tokens, which is what DFG.py's recursion
# comes to there; and where the reference merges parent lists with list(set(...)), whose order
# follows PYTHONHASHSEED, we keep first-occurrence order. That order names the normalised variables,
# so ours is deterministic and equals one of the reference's hash-seed outcomes.
_FLOW = ("assignment", "augmented_assignment", "for_in_clause", "for_statement", "while_statement",
         # DFG.py's special cases (a comprehension implies a for_in_clause)
         "default_parameter", "if_statement")
_DONE = -3  # _structure's stack marker: the subtree of the node below is finished


@functools.lru_cache(maxsize=1)
def _flow_in_sexp():
    return re.compile(r"\((?:%s)[ )]" % "|".join(_FLOW))


class _Flat:
    """A snippet's tree flattened in pre-order for DFG.py, since tree-sitter re-creates node objects
    on every access. tokens[j] = (type, token index, text) of the j-th token, the index as DFG.py's
    index_to_code gives it. The structure, kept only when the tree has _FLOW kinds: node i has
    kind[i], kids[i], node[i], tokens lo[i]:hi[i] under it, and flow[i] = does its subtree hold a
    _FLOW kind."""
    __slots__ = ("tokens", "kind", "kids", "node", "lo", "hi", "flow", "comprehensions")

    def __init__(self, tokens: list):
        self.tokens, self.kind, self.kids, self.node, self.lo, self.hi, self.flow = \
            tokens, [], [], [], [], [], []
        # any for_in_clause? (else no node needs its children reordered)
        self.comprehensions = False

    def field(self, i: int, name: str):
        child = self.node[i].child_by_field_name(name)
        return None if child is None else next(c for c in self.kids[i]
                                               if self.node[c].id == child.id)


def _tokens(code: str, token_nodes: list) -> list[tuple]:
    """utils.py index_to_code_token for every token: (type, token index, text)."""
    tokens, positions = [], []
    lines = None if code.isascii() else code.split("\n")
    for node in token_nodes:
        kind, start, end = node.type, node.start_byte, node.end_byte
        # ASCII: byte offsets are str offsets; lines are joined without their newlines
        if lines is None:
            text = code[start:end].replace("\n", "")
        else:  # utils.py slices each str line with tree-sitter's *byte* columns
            (r0, c0), (r1, c1) = node.start_point, node.end_point
            text = lines[r0][c0:c1] if r0 == r1 else \
                lines[r0][c0:] + "".join(lines[r0 + 1:r1]) + lines[r1][:c1]
        tokens.append((kind, len(tokens), text))
        positions.append((start, end))
    # zero-width tokens at one position (MISSING nodes): DFG.py's
    if len(set(positions)) < len(positions):
        # index_to_code keeps the later index
        last = {position: j for j, position in enumerate(positions)}
        tokens = [(kind, last[position], text)
                  for (kind, _, text), position in zip(tokens, positions)]
    return tokens


def _structure(t: _Flat, root, token_nodes: list) -> None:
    """Fill in t's tree structure down to the tokens (a string is one token: its parts are left
    out)."""
    kinds, kids, nodes, los, his, up = t.kind, t.kids, t.node, t.lo, t.hi, []
    stack, parents, n_tokens, token_ids = [root], [-1], 0, {node.id for node in token_nodes}
    while stack:
        node, parent = stack.pop(), parents.pop()
        if parent == _DONE:  # `node` is the index of a node whose subtree has been walked
            his[node] = n_tokens
            continue
        i, n_children = len(kinds), node.child_count
        kinds.append(node.type), kids.append([]), nodes.append(node), los.append(n_tokens), \
            his.append(0)
        up.append(parent)
        if parent >= 0:
            kids[parent].append(i)
        if node.id in token_ids:
            n_tokens += 1
        elif n_children:
            stack.append(i), parents.append(_DONE)
            stack += reversed(node.children)
            parents += [i] * n_children
            continue
        his[i] = n_tokens
    t.flow = [False] * len(kinds)
    for i, kind in enumerate(kinds):
        if kind in _FLOW:
            while i >= 0 and not t.flow[i]:  # mark the node and its ancestors
                t.flow[i], i = True, up[i]
    t.comprehensions = "for_in_clause" in kinds


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _variables(t: _Flat, i: int) -> list[tuple]:
    """utils.py tree_to_variable_index: (index, text) of the tokens under i whose text differs from
    their type."""
    return [(idx, text) for kind, idx, text in t.tokens[t.lo[i]:t.hi[i]] if kind != text]


def _sides(t: _Flat, i: int) -> tuple[list, list]:
    """DFG.py: pair `a, b = x, y` element-wise when both sides have the same length, else the whole
    sides."""
    left, right = t.field(i, "left"), t.field(i, "right")
    lefts, rights = ([x for x in t.kids[left] if t.kind[x] != ","],
                     [x for x in t.kids[right] if t.kind[x] != ","])
    if len(lefts) != len(rights):
        lefts, rights = [left], [right]
    return lefts or [left], rights or [right]


def _assign(t: _Flat, lefts: list, rights: list, dfg: list, states: dict) -> dict:
    """DFG.py: walk the right-hand sides, then every left variable is computedFrom all right
    variables."""
    for right in rights:
        states = _dfg(t, right, dfg, states)
    for left, right in zip(lefts, rights):
        sources = _variables(t, right)
        for idx, name in _variables(t, left):
            dfg.append((name, idx, "computedFrom", [s[1] for s in sources],
                        [s[0] for s in sources]))
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
    """DFG.py on tokens: a variable comesFrom where its name was last set; a new identifier sets its
    name. Text equal to the type (keywords, operators) is no variable."""
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
    """DFG.py DFG_python: append the data-flow edges under node i to `out` (sorted by token index,
    as DFG.py sorts each sub-result); returns the updated states."""
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
            kids = [c for c in kids if t.kind[c] == "for_in_clause"] + \
                [c for c in kids if t.kind[c] != "for_in_clause"]
        for child in kids:
            states = _dfg(t, child, dfg, states)
    dfg.sort(key=_idx)
    out += dfg
    return states


def dataflow(code: str, root, text: str, token_nodes: list) -> Counter:
    """The normalised dataflow edges of one snippet (dataflow_match.py get_data_flow +
    normalize_dataflow: variables renamed var_0, var_1, ... in order of appearance, so the match
    ignores identifier names). `root` is its tree, `text` = str(root), and `token_nodes` its tokens'
    nodes in source order (codebleu_ts._walk finds them)."""
    return Counter(_normalise(_edges(code, root, text, token_nodes)))


def _edges(code: str, root, text: str, token_nodes: list) -> list[tuple]:
    """DFG.py DFG_python over the whole snippet, sorted by token index (dataflow_match.py
    get_data_flow)."""
    # every _FLOW kind is a named node, so it prints
    structure = _flow_in_sexp().search(text) is not None
    t, edges = _Flat(_tokens(code, token_nodes)), []
    if structure:
        _structure(t, root, token_nodes)
    try:
        if structure:
            _dfg(t, 0, edges, {})
        else:
            _scan(t.tokens, edges, {})
        edges.sort(key=_idx)
    except Exception:
        # dataflow_match.py: any failure inside DFG_python means "no dataflow" for this snippet
        edges = []
    return edges


def _normalise(edges: list[tuple]) -> list[tuple]:
    """dataflow_match.py get_data_flow's filter (keep the edges that take part in a flow) and
    normalize_dataflow."""
    used = {e[1] for e in edges if e[4]} | {i for e in edges for i in e[4]}
    if not used:  # no edge has a parent: nothing flows
        return []
    merged = {}
    for name, idx, rel, names, idxs in edges:
        if idx in used:
            old = merged.get(idx)
            merged[idx] = (name, idx, rel, _unique(old[3] + names), _unique(old[4] + idxs)) \
                if old else (name, idx, rel, names, idxs)
    rename, out = {}, []
    for name, _, rel, names, _ in merged.values():
        for n in names + [name]:
            rename.setdefault(n, f"var_{len(rename)}")
        out.append((rename[name], rel, tuple(rename[n] for n in names)))
    return out

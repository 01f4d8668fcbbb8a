"""RUBY's edit distances (Tran et al. 2019): an exact tree edit distance, and the token edit
distance it falls back on when a side does not parse.

  tree_similarity     TRS = 1 - TED / (|T_ref| + |T_cand|) between two tree-sitter trees
                      (Zhang-Shasha, exact)
  token_similarity    STS = 1 - Levenshtein / max(|ref|, |cand|) between two token lists
  tree_edit_distance  Zhang-Shasha on nested `(label, [children])` tuples (the tests check it by
                      brute force)

It lives apart from metrics.py because the Zhang-Shasha dynamic programme is the one dense algorithm
in RUBY; metrics.py parses, tokenises and picks the level (`ruby`, `ruby_level`). Pure Python on the
nodes it is given: no imports, deterministic, no timeouts (codegen-metrics' RUBY approximates with a
time limit).
"""
from __future__ import annotations


def _ruby_tree(root, vocab: dict) -> tuple[list[int], list[int]]:
    """Post-order labels and leftmost-leaf indices of the tree RUBY compares. Labelling (our choice,
    documented): named nodes labelled by type, leaves by type plus text (`identifier:x`,
    `integer:1`); a string literal is one leaf labelled by its text; anonymous tokens kept only when
    they fill a field (`+`, `not in`, `and`), since an AST keeps the operator but not the
    punctuation; comments and other extras dropped."""
    labels, lml = [], []
    # node, kept children, next child, leftmost leaf index
    stack = [[root, _ruby_children(root), 0, None]]
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
    """Exact unit-cost tree edit distance (Zhang & Shasha 1989) from post-order labels and
    leftmost-leaf indices. O(|T1| |T2| min(depth, leaves)^2); plain lists, since the trees here have
    < 200 nodes."""
    n, m = len(labels1), len(labels2)
    if not n or not m:
        return n + m
    # the highest node of each leftmost-leaf path
    keyroots1 = sorted({lml1[i]: i for i in range(n)}.values())
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
                whole1, skip1, label1, dist_i1 = (lml1[i1] == li, lml1[i1] - li, labels1[i1],
                                                  tree_dist[i1])
                cur = [x] + [0] * (cols - 1)
                for y in range(1, cols):
                    j1 = lj + y - 1
                    best = min(prev[y], cur[y - 1]) + 1  # delete / insert
                    if whole1 and lml2[j1] == lj:  # both forests are whole trees: relabel the roots
                        best = min(best, prev[y - 1] + (label1 != labels2[j1]))
                        dist_i1[j1] = best
                    else:
                        # match the two rightmost trees as a whole (their distance is already known)
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


def tree_size(root) -> int:
    """How many nodes RUBY's tree of `root` has (linear; metrics.py bounds Zhang-Shasha's work with
    it)."""
    return len(_ruby_tree(root, {})[0])


def tree_similarity(reference_root, candidate_root) -> float:
    vocab = {}
    t1, t2 = _ruby_tree(reference_root, vocab), _ruby_tree(candidate_root, vocab)
    # Tran et al. 2019 TRS: 1 - TED / (|T_ref| + |T_cand|), in [0, 1] since
    # TED <= |T_ref| + |T_cand|
    return 1.0 - _zhang_shasha(*t1, *t2) / (len(t1[0]) + len(t2[0]))


def token_similarity(reference: list, candidate: list) -> float:
    if not reference and not candidate:
        return 1.0
    # Tran et al. 2019 STS: token edit distance over the longer length
    return 1.0 - _levenshtein(reference, candidate) / max(len(reference), len(candidate))

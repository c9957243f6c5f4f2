"""DraftTree.from_continuations against a brute-force dict-of-prefixes oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting.tree import DraftTree


def oracle_nodes(rows: list[list[int]], weights: list[float], budget: int):
    """(prefix, weight, score) of the kept nodes, in rank order: heavier, shallower, first seen."""
    prefix_weight: dict[tuple[int, ...], float] = {}  # insertion order = first seen
    for row, weight in zip(rows, weights):
        if weight <= 0:
            continue
        for depth in range(1, len(row) + 1):
            prefix = tuple(row[:depth])
            prefix_weight[prefix] = prefix_weight.get(prefix, 0.0) + weight
    first_seen = {prefix: i for i, prefix in enumerate(prefix_weight)}
    ranked = sorted(prefix_weight, key=lambda p: (-prefix_weight[p], len(p), first_seen[p]))
    total = sum(w for row, w in zip(rows, weights) if w > 0 and row)
    kept = ranked[:budget]
    return [
        (p, prefix_weight[p], prefix_weight[p] / (prefix_weight[p[:-1]] if len(p) > 1 else total))
        for p in kept
    ]


def as_arrays(rows: list[list[int]], weights: list[float], width: int):
    padded = np.full((len(rows), width), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row
    return padded, np.array([len(r) for r in rows], dtype=np.int64), np.array(weights, dtype=float)


def tree_prefixes(tree: DraftTree) -> list[tuple[int, ...]]:
    return [tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(len(tree))]


rows_strategy = st.lists(
    st.lists(st.integers(0, 3), min_size=1, max_size=5), min_size=0, max_size=25
)


@settings(max_examples=300, deadline=None)
@given(
    rows=rows_strategy,
    data=st.data(),
    budget=st.integers(0, 40),
    sort_rows=st.booleans(),
)
def test_matches_brute_force_oracle(rows, data, budget, sort_rows):
    # Small integer weights: exact float sums, many ties (exercises the tie-break).
    weights = data.draw(st.lists(st.integers(0, 3), min_size=len(rows), max_size=len(rows)))
    weights = [float(w) for w in weights]
    if sort_rows:  # the datastore's order: takes the sorted-rows kernel, not the hash table
        order = sorted(range(len(rows)), key=lambda i: rows[i])
        rows, weights = [rows[i] for i in order], [weights[i] for i in order]
    tree = DraftTree.from_continuations(*as_arrays(rows, weights, width=6), budget=budget)
    expected = oracle_nodes(rows, weights, budget)
    assert tree_prefixes(tree) == [p for p, _, _ in expected]
    np.testing.assert_allclose(tree.scores, [s for _, _, s in expected], rtol=1e-12)


@settings(max_examples=100, deadline=None)
@given(rows=rows_strategy, data=st.data(), budget=st.integers(1, 30))
def test_prefix_closed_topological_siblings_heaviest_first(rows, data, budget):
    weights = data.draw(
        st.lists(st.floats(0.001, 10.0), min_size=len(rows), max_size=len(rows))
    )
    tree = DraftTree.from_continuations(*as_arrays(rows, weights, width=5), budget=budget)
    assert np.all(tree.parents < np.arange(len(tree)))  # also checked by DraftTree itself
    weights_of = dict(zip(tree_prefixes(tree), [w for _, w, _ in oracle_nodes(rows, weights, budget)]))
    for siblings in tree.children:
        sibling_weights = [weights_of[tree_prefixes(tree)[s - 1]] for s in siblings]
        assert sibling_weights == sorted(sibling_weights, reverse=True)
    # Scores of siblings are their shares of the parent: they sum to at most 1.
    for siblings in tree.children:
        assert sum(tree.scores[s - 1] for s in siblings) <= 1 + 1e-9


def test_identical_rows_add_up_and_padding_is_ignored():
    continuations = np.array([[5, 6, -1], [5, 6, 9], [5, 7, -1], [5, 6, -1]])
    tree = DraftTree.from_continuations(continuations, [2, 2, 2, 2], [1.0, 1.0, 1.0, 1.0], 10)
    assert tree_prefixes(tree) == [(5,), (5, 6), (5, 7)]
    np.testing.assert_allclose(tree.scores, [1.0, 0.75, 0.25])


def test_non_positive_weights_and_budget_zero():
    continuations = np.array([[1, 2], [3, 4]])
    tree = DraftTree.from_continuations(continuations, [2, 2], [0.0, 2.0], 10)
    assert tree_prefixes(tree) == [(3,), (3, 4)]
    assert len(DraftTree.from_continuations(continuations, [2, 2], [1.0, 1.0], 0)) == 0
    empty = DraftTree.from_continuations(np.zeros((0, 4)), [], [], 8)
    assert len(empty) == 0


def test_large_token_ids_survive():
    big = 2**31 - 5  # well above any vocabulary; keys must not collide or truncate
    tree = DraftTree.from_continuations(np.array([[big, 0], [0, big]]), [2, 2], [2.0, 1.0], 10)
    assert tree_prefixes(tree) == [(big,), (big, 0), (0,), (0, big)]


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError):
        DraftTree.from_continuations(np.zeros((3, 2)), [1, 1], [1.0, 1.0, 1.0], 4)

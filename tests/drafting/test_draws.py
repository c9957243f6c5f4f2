"""Draws (tokens sampled from a draft distribution) travel with trees: through depth cuts, not
through score cuts, and through CombinedDrafter's merge to the node of the same path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from test_combined import FixedDrafter
from tiny_models import random_trees
from restdecode.drafting import CombinedDrafter, ContextDrafter, DraftTree
from restdecode.drafting.draws import Draws

VOCAB = 6


def draws_for(tree: DraftTree, rng: np.random.Generator, count: int) -> Draws:
    """``count`` draws below random nodes of ``tree`` (or the root), from two random rows."""
    q = torch.tensor(rng.dirichlet(np.ones(VOCAB), size=2), dtype=torch.float32)
    anchors = rng.integers(-1, len(tree), count)
    depths = [0 if a < 0 else int(tree.depths[a]) for a in anchors]
    return Draws(anchors, depths, rng.integers(0, VOCAB, count), rng.integers(0, 2, count), q)


def described(tree: DraftTree) -> list[tuple[tuple[int, ...], int, list[float]]]:
    """Each draw as (anchor path, token, its q row), in order: what must survive a change of
    node numbering."""
    if tree.draws is None:
        return []
    paths = tree.node_paths()
    return [(() if a < 0 else paths[a], t, tree.draws.q[r].tolist())
            for a, t, r in zip(tree.draws.anchors.tolist(), tree.draws.tokens.tolist(),
                               tree.draws.rows.tolist())]


@settings(max_examples=80, deadline=None)
@given(random_trees(VOCAB, 10), st.integers(0, 6), st.integers(0, 2**16))
def test_a_depth_cut_keeps_the_draws_below_kept_nodes_and_a_score_cut_drops_them(tree, depth,
                                                                                 seed):
    tree = tree.with_draws(draws_for(tree, np.random.default_rng(seed), 5))
    keep = tree.depths <= depth
    cut = tree.subset(keep, blind_to_draws=True)
    kept_paths = {()} | set(cut.node_paths())
    assert described(cut) == [d for d in described(tree) if d[0] in kept_paths]
    assert cut.subset(np.ones(len(cut), dtype=bool)).draws is None
    assert tree.subset(keep).draws is None


@settings(max_examples=80, deadline=None)
@given(random_trees(VOCAB, 8), random_trees(VOCAB, 8), st.integers(1, 12), st.integers(0, 2**16),
       st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=30))
def test_merged_draws_sit_at_the_node_of_their_path_in_source_order(first, second, budget, seed,
                                                                    context):
    rng = np.random.default_rng(seed)
    sources = [first.with_draws(draws_for(first, rng, 4)), second.with_draws(draws_for(second, rng, 3))]
    scored = [DraftTree(t.tokens, t.parents, rng.uniform(0.1, 1.0, len(t)), draws=t.draws)
              for t in sources]
    merged = CombinedDrafter([FixedDrafter(t) for t in scored] + [ContextDrafter(budget=4)],
                             budget=budget).propose(context)
    kept_paths = {()} | set(merged.node_paths())
    want = [d for t in scored for d in described(t) if d[0] in kept_paths]
    got = described(merged)
    assert [(path, token) for path, token, _ in got] == [(path, token) for path, token, _ in want]
    for (_, _, got_q), (_, _, want_q) in zip(got, want):
        np.testing.assert_allclose(got_q, want_q)


def test_a_draw_merged_with_a_retrieval_node_of_the_same_token_stays_a_draw():
    q = torch.tensor([[0.1, 0.6, 0.3]])
    sampled = DraftTree(np.array([1]), np.array([-1]), np.array([0.6]),
                        draws=Draws([-1], [0], [1], [0], q))
    retrieved = DraftTree(np.array([1, 2]), np.array([-1, 0]), np.array([1.0, 1.0]))
    merged = CombinedDrafter([FixedDrafter(sampled), FixedDrafter(retrieved)],
                             budget=8).propose([0, 1])
    assert merged.node_paths() == [(1,), (1, 2)]
    assert merged.compile().slot_draws == [[(1, 0)], [], []]


def test_draws_are_checked():
    q = torch.tensor([[0.5, 0.5, 0.0]])
    with pytest.raises(ValueError, match="probability 0"):
        Draws([-1], [0], [2], [0], q)
    with pytest.raises(ValueError, match="outside q"):
        Draws([-1], [0], [1], [1], q)
    with pytest.raises(ValueError, match="anchored outside"):
        DraftTree.chain([1]).with_draws(Draws([1], [1], [0], [0], q))
    with pytest.raises(ValueError, match="depths"):
        DraftTree.chain([1]).with_draws(Draws([0], [2], [0], [0], q))

"""CombinedDrafter: the merge of a context and a datastore source, against a prefix-dict oracle."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting import (
    CombinedDrafter,
    ContextDrafter,
    DraftTree,
    NoDrafter,
    RetrievalDrafter,
    StepFeedback,
    WeightedContinuations,
)


def path_weights(tree: DraftTree, share: float) -> dict[tuple[int, ...], float]:
    """path -> probability of the node (product of its scores along the path) times ``share``."""
    weights: dict[tuple[int, ...], float] = {}
    for node in range(len(tree)):
        path = tree.path_to(node)
        probability = float(np.prod([tree.scores[k] for k in path]))
        weights[tuple(int(tree.tokens[k]) for k in path)] = probability * share
    return weights


def paths(tree: DraftTree) -> list[tuple[int, ...]]:
    return [tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(len(tree))]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    budget=st.integers(1, 30),
    spans=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    source_weights=st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=2, max_size=2),
)
def test_merge_matches_oracle(store_and_documents, data, budget, spans, source_weights):
    store, _, tokenizer = store_and_documents
    context = data.draw(st.lists(st.integers(1, len(tokenizer) - 1), min_size=2, max_size=30))
    context_drafter = ContextDrafter(budget=budget, span=spans[0])
    retrieval_drafter = RetrievalDrafter(store, budget=budget, span=spans[1], max_matches=10**6)
    combined = CombinedDrafter([context_drafter, retrieval_drafter], budget=budget, weights=source_weights)
    tree = combined.propose(context)

    # Oracle: every source's own tree, each node weighing its path probability x the source's
    # weight over the total of all path probabilities at depth 1; paths in several trees add up.
    weights: dict[tuple[int, ...], float] = {}
    for source, source_weight in zip([context_drafter, retrieval_drafter], source_weights):
        own = source.propose(context)
        top = sum(own.scores[own.parents < 0]) if len(own) else 0.0
        if top > 0 and source_weight > 0:
            for path, weight in path_weights(own, source_weight / top).items():
                weights[path] = weights.get(path, 0.0) + weight
    kept = paths(tree)
    assert len(kept) == min(budget, len(weights)) and set(kept) <= set(weights)
    assert all(len(p) == 1 or p[:-1] in kept for p in kept)  # prefix-closed
    left_out = [w for p, w in weights.items() if p not in set(kept)]
    assert min((weights[p] for p in kept), default=np.inf) >= max(left_out, default=0) - 1e-9
    total = sum(weights[p] for p in weights if len(p) == 1)
    expected_scores = [weights[p] / (weights[p[:-1]] if len(p) > 1 else total) for p in kept]
    np.testing.assert_allclose(tree.scores, expected_scores, rtol=1e-6)


class FixedDrafter:
    """Not a continuation drafter: always the same scored tree (as a draft model might give)."""

    def __init__(self, tree: DraftTree):
        self.tree = tree

    def propose(self, token_ids):
        return self.tree

    def observe(self, feedback):
        pass

    def reset(self):
        pass


def test_any_scored_drafter_merges():
    # 7 -> 8 (0.5 of the 7s) and 9 (0.25), both at depth 1 = all of this source's mass
    fixed = DraftTree(np.array([7, 8, 9]), np.array([-1, 0, 0]), np.array([1.0, 0.5, 0.25]),
                      match_length=4)
    chain = DraftTree(np.array([7, 8]), np.array([-1, 0]), np.array([1.0, 1.0]), match_length=2)
    tree = CombinedDrafter([FixedDrafter(fixed), FixedDrafter(chain)], budget=2).propose([1, 2])
    assert paths(tree) == [(7,), (7, 8)]
    np.testing.assert_allclose(tree.scores, [1.0, (0.5 + 1.0) / 2])
    assert tree.match_length == 4  # the longest match among the sources


def test_a_tree_survives_the_round_trip_through_weighted_paths(store_and_documents):
    store, _, tokenizer = store_and_documents
    context = tokenizer.encode("the cat sat on the mat a dog the cat")
    tree = RetrievalDrafter(store, budget=12, max_matches=10**6).propose(context)
    again = WeightedContinuations.from_tree(tree).to_tree(len(tree))
    assert paths(again) == paths(tree) and again.match_length == tree.match_length > 0
    np.testing.assert_allclose(again.scores, tree.scores / tree.scores[tree.parents < 0].sum()
                               ** (tree.parents < 0), rtol=1e-9)



def test_identical_continuations_from_two_sources_add_up(store_and_documents):
    store, _, tokenizer = store_and_documents
    # The context repeats a corpus phrase: both sources propose "to the mat and slept".
    context = tokenizer.encode("the cat ran to the mat and slept a dog sat the cat ran")
    combined = CombinedDrafter(
        [ContextDrafter(span=5), RetrievalDrafter(store, span=5)], budget=5
    )
    tree = combined.propose(context)
    assert paths(tree)[-1] == tuple(tokenizer.encode("to the mat and slept"))
    np.testing.assert_allclose(tree.scores, 1.0)  # all the weight (2 of 2) on one chain


def test_observe_and_reset_reach_every_source(store_and_documents):
    store, _, tokenizer = store_and_documents
    sources = [ContextDrafter(), RetrievalDrafter(store)]
    combined = CombinedDrafter(sources, budget=8)
    combined.propose(tokenizer.encode("the cat sat on the mat a dog the cat"))
    combined.observe(StepFeedback(tokenizer.encode("sat")))
    assert sources[0].last_match_length == 2
    combined.reset()
    assert sources[0].last_match_length == 0


def test_rejects_non_drafters_and_bad_weights():
    with pytest.raises(TypeError):
        CombinedDrafter([object()], budget=8)  # type: ignore[list-item]
    with pytest.raises(ValueError):
        CombinedDrafter([ContextDrafter()], budget=8, weights=[1.0, 2.0])
    with pytest.raises(ValueError):
        CombinedDrafter([], budget=8)


def test_no_drafter_always_proposes_nothing():
    drafter = NoDrafter()
    assert len(drafter.propose([1, 2, 1, 2])) == 0

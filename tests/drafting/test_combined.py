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


def merged_prefix_weights(sources: list[WeightedContinuations], source_weights: list[float]):
    """prefix -> weight, each source's rows normalised to sum to its source weight (first-seen order)."""
    weights: dict[tuple[int, ...], float] = {}
    for found, source_weight in zip(sources, source_weights):
        total = float(found.weights.sum())
        for row, length, weight in zip(found.continuations, found.lengths, found.weights):
            share = weight * (source_weight / total)
            for depth in range(1, int(length) + 1):
                prefix = tuple(int(t) for t in row[:depth])
                weights[prefix] = weights.get(prefix, 0.0) + share
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
    sources = [context_drafter.continuations(context), retrieval_drafter.continuations(context)]
    combined = CombinedDrafter([context_drafter, retrieval_drafter], budget=budget, weights=source_weights)
    tree = combined.propose(context)

    live = [(s, w) for s, w in zip(sources, source_weights) if len(s) and w > 0]
    weights = merged_prefix_weights([s for s, _ in live], [w for _, w in live])
    first_seen = {p: i for i, p in enumerate(weights)}
    expected = sorted(weights, key=lambda p: (-weights[p], len(p), first_seen[p]))[:budget]
    assert paths(tree) == expected
    total = sum(w for _, w in live)
    expected_scores = [weights[p] / (weights[p[:-1]] if len(p) > 1 else total) for p in expected]
    np.testing.assert_allclose(tree.scores, expected_scores, rtol=1e-9)


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


def test_a_source_of_probabilities_keeps_its_mass_in_the_merge():
    """A source that is 20% sure of its one token weighs 0.2 against a counted source's 1
    (normalised, it would weigh 1 and outrank the counted source's second token)."""
    counted = DraftTree(np.array([7, 8]), np.array([-1, -1]), np.array([0.7, 0.3]))
    unsure = DraftTree(np.array([5]), np.array([-1]), np.array([0.2]))
    sure = DraftTree(np.array([5]), np.array([-1]), np.array([0.9]))
    probabilities = FixedDrafter(unsure)
    probabilities.weighs_probabilities = True
    tree = CombinedDrafter([FixedDrafter(counted), probabilities], budget=3).propose([1])
    assert paths(tree) == [(7,), (8,), (5,)]
    np.testing.assert_allclose(tree.scores, np.array([0.7, 0.3, 0.2]) / 1.2)
    probabilities.tree = sure
    assert paths(CombinedDrafter([FixedDrafter(counted), probabilities], budget=3).propose(
        [1])) == [(5,), (7,), (8,)]
    normalised = CombinedDrafter([FixedDrafter(counted), FixedDrafter(unsure)], budget=3)
    assert paths(normalised.propose([1]))[0] == (5,)


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


def test_match_power_trusts_the_longer_match():
    long_match = DraftTree(np.array([7]), np.array([-1]), np.array([1.0]), match_length=8)
    short_match = DraftTree(np.array([9]), np.array([-1]), np.array([1.0]), match_length=2)
    sources = [FixedDrafter(short_match), FixedDrafter(long_match)]
    even = CombinedDrafter(sources, budget=2).propose([1])
    np.testing.assert_allclose(even.scores, [0.5, 0.5])
    trusted = CombinedDrafter(sources, budget=2, match_power=1.0).propose([1])
    assert paths(trusted) == [(7,), (9,)]
    np.testing.assert_allclose(trusted.scores, [0.8, 0.2])

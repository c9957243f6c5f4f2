"""default_drafter: retrieval + context (or memory), a fixed tree or one planned by latency."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restdecode.drafting import (
    CANDIDATE_BUDGET,
    DEFAULT_BUDGET,
    CombinedDrafter,
    ContextDrafter,
    MemoryDrafter,
    PlannedDrafter,
    RetrievalDrafter,
    default_drafter,
)
from restdecode.drafting.defaults import CONTEXT_MIN_SUFFIX, default_memory
from restdecode.latency import LatencyProfile
from tests.drafting.test_context import brute_force


def flat_profile() -> LatencyProfile:
    """Every width costs the same: the planner keeps every node with a chance."""
    return LatencyProfile((1, 64), (0,), np.array([[0.05, 0.05]]))


def test_without_a_datastore_only_the_context_drafts():
    drafter = default_drafter(None, budget=5)
    assert isinstance(drafter, ContextDrafter)
    tree = drafter.propose([1, 2, 3, 9, 1, 2, 3, 8, 1, 2, 3])  # "1 2 3" seen twice before
    assert 0 < len(tree) <= 5 and {9, 8} <= set(tree.tokens.tolist())


def test_with_a_datastore_both_sources_merge_under_the_budget(store_and_documents):
    store, documents, tokenizer = store_and_documents
    drafter = default_drafter(store)
    assert isinstance(drafter, CombinedDrafter) and drafter.budget == DEFAULT_BUDGET
    assert {type(source) for source in drafter.drafters} == {RetrievalDrafter, ContextDrafter}
    assert drafter.match_from == 1  # the tree carries the context source's match length
    context = tokenizer.encode("the cat", add_special_tokens=False)
    tree = drafter.propose(context)
    assert 0 < len(tree) <= DEFAULT_BUDGET
    # The store's documents say what follows "the cat": the tree proposes one of those words.
    after_the_cat = tokenizer.convert_tokens_to_ids(["sat", "ran"])
    assert set(tree.tokens[tree.parents == -1].tolist()) & set(after_the_cat)


def test_a_profile_plans_trees_cut_from_a_larger_candidate_tree(store_and_documents):
    store, _, tokenizer = store_and_documents
    drafter = default_drafter(store, profile=flat_profile())
    assert isinstance(drafter, PlannedDrafter)
    assert drafter.drafter.budget == CANDIDATE_BUDGET
    tree = drafter.propose(tokenizer.encode("the cat", add_special_tokens=False))
    assert 0 < len(tree) <= CANDIDATE_BUDGET


def test_an_explicit_budget_overrides_the_profile(store_and_documents):
    store, _, _ = store_and_documents
    drafter = default_drafter(store, profile=flat_profile(), budget=7)
    assert isinstance(drafter, CombinedDrafter) and drafter.budget == 7


def test_a_memory_becomes_the_context_source(store_and_documents):
    store, _, _ = store_and_documents
    memory = MemoryDrafter()
    drafter = default_drafter(store, profile=flat_profile(), memory=memory)
    assert drafter.drafter.drafters[1] is memory
    assert default_drafter(None, memory=memory, budget=4) is memory and memory.budget == 4


def test_the_context_source_drafts_after_a_single_repeated_token():
    assert CONTEXT_MIN_SUFFIX == 1 and default_memory().min_suffix == 1
    drafter = default_drafter(None, budget=4)
    tree = drafter.propose([5, 7, 1, 5])  # "5" came once before, followed by 7
    assert tree.tokens.tolist()[:1] == [7] and tree.match_length == 1


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.integers(1, 12), min_size=1, max_size=30))
def test_the_planned_tree_carries_the_context_sources_match_length(store_and_documents, words):
    # The planner groups its calibration by the tree's match length: the context's own longest
    # repeated suffix, whatever the datastore matched.
    store, _, _ = store_and_documents
    planned = default_drafter(store, profile=flat_profile())
    merged = planned.drafter
    tree = merged.propose(words)
    expected, _ = brute_force(words, 1, merged.drafters[1].max_suffix, span=1, max_matches=1)
    assert tree.match_length == expected


def test_the_datastore_match_does_not_set_the_trees_match_length(store_and_documents):
    store, _, tokenizer = store_and_documents
    merged = default_drafter(store, profile=flat_profile()).drafter
    tree = merged.propose(tokenizer.encode("the cat", add_special_tokens=False))
    assert merged.drafters[0].last_match_length == 2 and len(tree) > 0
    assert tree.match_length == 0  # the context repeats nothing


def test_match_from_must_name_a_drafter():
    with pytest.raises(ValueError, match="match_from"):
        CombinedDrafter([ContextDrafter()], budget=4, match_from=1)

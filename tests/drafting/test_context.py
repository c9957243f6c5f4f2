"""ContextDrafter against a brute-force scan of the context, fed incrementally."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting import ContextDrafter, DraftTree


def brute_force(context: list[int], min_suffix: int, max_suffix: int, span: int, max_matches: int):
    """(match length, continuations) of the longest suffix that occurs earlier, scanning it all."""
    n = len(context)
    for k in range(min(max_suffix, n - 1), min_suffix - 1, -1):
        suffix = context[n - k:]
        ends = [e for e in range(k, n) if context[e - k:e] == suffix][-max_matches:]
        if ends:
            return k, [tuple(context[e:e + span]) for e in ends]
    return 0, []


def rows_of(continuations) -> list[tuple[int, ...]]:
    return [
        tuple(int(t) for t in row[:length])
        for row, length in zip(continuations.continuations, continuations.lengths)
    ]


def tree_paths(tree: DraftTree) -> set[tuple[int, ...]]:
    return {tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(len(tree))}


@settings(max_examples=100, deadline=None)
@given(
    context=st.lists(st.integers(0, 3), min_size=1, max_size=60),
    chunks=st.lists(st.integers(1, 6), min_size=1, max_size=60),
    min_suffix=st.integers(1, 3),
    max_suffix=st.integers(3, 6),
    span=st.integers(1, 5),
    max_matches=st.integers(1, 8),
)
def test_matches_brute_force_while_context_grows(
    context, chunks, min_suffix, max_suffix, span, max_matches
):
    drafter = ContextDrafter(
        budget=1000, min_suffix=min_suffix, max_suffix=max_suffix, span=span, max_matches=max_matches
    )
    end = 0
    for chunk in chunks:  # the context grows by several tokens per step
        end = min(end + chunk, len(context))
        prefix = context[:end]
        expected_length, expected_rows = brute_force(prefix, min_suffix, max_suffix, span, max_matches)
        found = drafter.continuations(prefix)
        assert drafter.last_match_length == expected_length
        assert rows_of(found) == expected_rows
        tree = drafter.propose(prefix)
        assert tree_paths(tree) == {row[:d] for row in expected_rows for d in range(1, len(row) + 1)}
        if end == len(context):
            break


def test_tree_of_all_occurrences_counts_then_recency():
    # After "1 2" came 3 twice and 4 once: 3 outweighs 4, though 4 is not the oldest.
    context = [1, 2, 3, 5, 1, 2, 4, 6, 1, 2, 3, 7, 1, 2]
    tree = ContextDrafter(budget=4, span=1).propose(context)
    assert tree.tokens.tolist() == [3, 4]
    np.testing.assert_allclose(tree.scores, [2 / 3, 1 / 3], atol=0.05)
    # After "7 8" came 5 then 6: a tie in counts, the recent one first.
    tree = ContextDrafter(budget=4, span=1).propose([7, 8, 5, 0, 7, 8, 6, 1, 7, 8])
    assert tree.tokens.tolist() == [6, 5]


def test_longest_suffix_wins_over_more_frequent_shorter_one():
    context = [9, 1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 4, 0, 9, 1, 2]
    tree = ContextDrafter(budget=8, span=2).propose(context)
    assert tree.tokens.tolist() == [3, 0]


def test_reset_and_unrelated_context_start_afresh():
    drafter = ContextDrafter(budget=8, span=2)
    assert drafter.propose([5, 6, 7, 5, 6]).tokens.tolist() == [7, 5]
    drafter.reset()
    assert len(drafter.propose([5, 6])) == 0
    # A different context without reset: the drafter notices it is not an extension.
    assert drafter.propose([1, 2, 3, 1, 2]).tokens.tolist() == [3, 1]
    assert drafter.propose([8, 1, 2, 3, 1, 2]).tokens.tolist() == [3, 1]


def test_accepts_tensors_and_arrays():
    context = [4, 5, 6, 4, 5]
    expected = ContextDrafter(budget=8).propose(context).tokens.tolist()
    assert ContextDrafter(budget=8).propose(torch.tensor(context)).tokens.tolist() == expected
    assert ContextDrafter(budget=8).propose(np.array(context)).tokens.tolist() == expected


def test_no_repeat_gives_empty_tree():
    assert len(ContextDrafter(budget=8, min_suffix=1).propose([1, 2, 3, 4])) == 0

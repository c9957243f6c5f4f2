"""RetrievalDrafter on a real datastore built from text files with a real (word-level) tokenizer."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting import DraftTree, RetrievalDrafter

def brute_force_continuations(documents, context, min_suffix, max_suffix, span):
    """Counter of continuations after the longest suffix with an occurrence followed by a token
    of the same document, scanning every document."""
    for k in range(min(max_suffix, len(context)), min_suffix - 1, -1):
        suffix = context[len(context) - k:]
        found = Counter(
            tuple(doc[end:end + span])
            for doc in documents
            for end in range(k, len(doc))
            if doc[end - k:end] == suffix
        )
        if found:
            return k, found
    return 0, Counter()


def heaviest_prefixes(found: Counter, budget: int) -> list[tuple[int, ...]]:
    """Brute-force REST tree: all prefixes counted, the `budget` most frequent kept, ties broken
    shallower first, then lexicographically (the store's rows come sorted)."""
    prefix_count: Counter = Counter()
    for row, count in found.items():
        for depth in range(1, len(row) + 1):
            prefix_count[row[:depth]] += count
    return sorted(prefix_count, key=lambda p: (-prefix_count[p], len(p), p))[:budget]


def paths(tree: DraftTree) -> list[tuple[int, ...]]:
    return [tuple(int(tree.tokens[j]) for j in tree.path_to(i)) for i in range(len(tree))]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), budget=st.integers(1, 40), span=st.integers(1, 6))
def test_tree_is_the_heaviest_prefixes_of_the_store_continuations(store_and_documents, data, budget, span):
    store, documents, tokenizer = store_and_documents
    words = st.integers(1, len(tokenizer) - 1)  # any word but [UNK] (id 0)
    context = data.draw(st.lists(words, min_size=0, max_size=12))
    drafter = RetrievalDrafter(store, budget=budget, span=span, max_suffix=8, max_matches=10**6)
    tree = drafter.propose(context)
    match_length, found = brute_force_continuations(documents, context, 2, 8, span)
    assert drafter.last_match_length == match_length
    assert paths(tree) == heaviest_prefixes(found, budget)


def test_a_corpus_phrase_is_drafted_to_its_end(store_and_documents):
    store, _, tokenizer = store_and_documents
    tree = RetrievalDrafter(store, budget=64, span=5).propose(tokenizer.encode("the cat ran"))
    # "the cat ran" is only ever followed by "to the mat and slept" in the corpus.
    assert paths(tree)[-1] == tuple(tokenizer.encode("to the mat and slept"))


def test_no_match_gives_empty_tree(store_and_documents):
    store, _, _ = store_and_documents
    drafter = RetrievalDrafter(store)
    assert len(drafter.propose([0, 0, 0])) == 0  # [UNK] never occurs in the corpus
    assert drafter.last_match_length == 0
    assert len(drafter.propose([])) == 0


def test_max_matches_caps_the_examined_occurrences(store_and_documents):
    store, _, tokenizer = store_and_documents
    drafter = RetrievalDrafter(store, budget=64, max_matches=3)
    found = drafter.continuations(tokenizer.encode("the cat"))
    assert found.weights.sum() == 3 < drafter.last_num_occurrences

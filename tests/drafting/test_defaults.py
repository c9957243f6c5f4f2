"""default_drafter: retrieval + context under one budget, context alone without a datastore."""

from restdecode.drafting import (
    DEFAULT_BUDGET,
    CombinedDrafter,
    ContextDrafter,
    RetrievalDrafter,
    default_drafter,
)


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
    context = tokenizer.encode("the cat", add_special_tokens=False)
    tree = drafter.propose(context)
    assert 0 < len(tree) <= DEFAULT_BUDGET
    # The store's documents say what follows "the cat": the tree proposes one of those words.
    after_the_cat = tokenizer.convert_tokens_to_ids(["sat", "ran"])
    assert set(tree.tokens[tree.parents == -1].tolist()) & set(after_the_cat)

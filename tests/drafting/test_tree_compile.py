"""DraftTree invariants and its compiled form, checked against paths walked by hand."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting.tree import DraftTree


@st.composite
def random_trees(draw):
    size = draw(st.integers(0, 24))
    parents = [draw(st.integers(-1, i - 1)) for i in range(size)]
    tokens = draw(st.lists(st.integers(0, 50), min_size=size, max_size=size))
    return DraftTree(np.array(tokens), np.array(parents))


@settings(max_examples=60, deadline=None)
@given(random_trees())
def test_compiled_mask_and_positions_follow_paths(tree):
    compiled = tree.compile()
    mask = compiled.ancestor_mask.numpy()
    assert compiled.num_slots == len(tree) + 1
    assert mask[:, 0].all()  # everyone sees the root
    for node in range(len(tree)):
        path_slots = {0} | {n + 1 for n in tree.path_to(node)}
        assert set(np.flatnonzero(mask[node + 1]).tolist()) == path_slots
        assert compiled.depth_offsets[node + 1].item() == len(path_slots) - 1 == tree.depths[node]
        assert node + 1 in compiled.children[int(tree.parents[node]) + 1]
    assert compiled.slot_tokens == [-1] + tree.tokens.tolist()


def test_chain_and_empty():
    chain = DraftTree.chain([7, 8, 9])
    assert chain.parents.tolist() == [-1, 0, 1] and chain.max_depth == 3
    assert chain.children == [[1], [2], [3], []]
    assert len(DraftTree.empty()) == 0 and DraftTree.empty().compile().num_slots == 1


def test_rejects_non_topological_parents():
    with pytest.raises(ValueError, match="topological"):
        DraftTree(np.array([1, 2]), np.array([1, -1]))
    with pytest.raises(ValueError, match="differ in length"):
        DraftTree(np.array([1, 2]), np.array([-1]))

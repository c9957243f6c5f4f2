"""Drafting replay: replaying a greedy output through a drafter takes exactly the decoding loop's
steps with that drafter, without running the model."""

from __future__ import annotations

import numpy as np
import pytest

from tiny_models import BYTE_VOCAB, OracleDrafter, byte_tokenizer, tiny_model, trie_tree
from restdecode.benchmark.replay import greedy_accepted_path, replay
from restdecode.decode import generate
from restdecode.drafting import ContextDrafter, PlannedDrafter
from restdecode.latency import LatencyProfile


def test_greedy_accepted_path_follows_the_matching_branch():
    tree = trie_tree([[5, 6, 7], [5, 8], [9]])  # nodes: 5, 6, 7, 8, 9
    assert greedy_accepted_path(tree, [5, 8, 1]) == [0, 3]
    assert greedy_accepted_path(tree, [5, 6, 7, 4]) == [0, 1, 2]
    assert greedy_accepted_path(tree, [5, 6]) == [0, 1]
    assert greedy_accepted_path(tree, [4, 5]) == []


def _planned(drafter):
    # A profile on which width costs something: the planner cuts trees, and its calibration
    # (learned from the trees observed) makes later steps depend on earlier ones.
    profile = LatencyProfile(widths=[1, 4, 16], cache_lengths=[1, 256],
                             seconds=np.array([[0.010, 0.011, 0.020], [0.010, 0.011, 0.020]]), key={})
    return PlannedDrafter(drafter, profile)


@pytest.mark.parametrize("make_drafter", ["oracle", "planned oracle", "planned context"])
@pytest.mark.parametrize("max_new_tokens", [23, 48])
def test_replay_takes_the_decoding_loops_steps(make_drafter, max_new_tokens):
    model = tiny_model("llama", vocab_size=BYTE_VOCAB)
    rng = np.random.default_rng(max_new_tokens)
    # A repeated phrase in the prompt gives context drafting something to find.
    phrase = rng.integers(3, BYTE_VOCAB, 6).tolist()
    prompt = phrase + rng.integers(3, BYTE_VOCAB, 4).tolist() + phrase[:3]
    plain = generate(model, byte_tokenizer(), input_ids=prompt, max_new_tokens=max_new_tokens)
    output = plain.token_ids

    def drafter():
        if make_drafter == "planned context":
            return _planned(ContextDrafter(span=8, min_suffix=1, budget=12))
        oracle = OracleDrafter(len(prompt), output, BYTE_VOCAB, seed=5)
        return oracle if make_drafter == "oracle" else _planned(oracle)

    decoded = generate(model, byte_tokenizer(), input_ids=prompt, drafter=drafter(),
                       max_new_tokens=max_new_tokens)
    assert decoded.token_ids == output
    steps = replay(drafter(), prompt, output, max_new_tokens=max_new_tokens)
    assert [s.committed for s in steps] == decoded.stats.accepted_per_step
    assert [s.nodes for s in steps] == decoded.stats.tree_size_per_step
    assert [s.cache_length for s in steps] == list(
        len(prompt) + np.cumsum([1] + decoded.stats.accepted_per_step[:-1]) - 1)
    assert sum(s.committed for s in steps) == len(output) - 1
    assert sum(s.nodes for s in steps) > 0
    if make_drafter != "planned context":  # the random model does not repeat the context
        assert len(steps) < len(output) - 1


def test_replay_of_an_empty_or_one_token_output_has_no_steps():
    drafter = ContextDrafter()
    assert replay(drafter, [3, 4, 5], []) == []
    assert replay(drafter, [3, 4, 5], [6]) == []

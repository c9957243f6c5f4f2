"""Acceptance rules: greedy picks the longest argmax path; sampling is exactly the model's distribution."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from restdecode.accept import Sampler, accept_greedy, accept_sampling
from restdecode.drafting.tree import DraftTree


def chi_square_p(samples: Counter, expected: dict, n: int) -> float:
    """p-value of ``samples`` against probabilities ``expected``; sparse bins pooled (expected < 5)."""
    assert set(samples) <= {k for k, p in expected.items() if p > 0}, "impossible outcome drawn"
    observed, wanted, rest_obs, rest_exp = [], [], 0, 0.0
    for outcome, p in expected.items():
        if p * n >= 5:
            observed.append(samples.get(outcome, 0))
            wanted.append(p * n)
        else:
            rest_obs += samples.get(outcome, 0)
            rest_exp += p * n
    if rest_exp > 0:
        observed.append(rest_obs)
        wanted.append(rest_exp)
    wanted = np.array(wanted) * (sum(observed) / sum(wanted))  # exact normalisation for scipy
    return float(chisquare(observed, wanted).pvalue)


def sequential_outcomes(logits: torch.Tensor, tree: DraftTree, sampler: Sampler) -> dict:
    """Oracle: distribution of the emitted tokens if each were drawn from the model one by one.

    Drawing t at a slot continues at the child proposing t (the model would then be asked there)
    and ends the step otherwise (t is the bonus)."""
    compiled = tree.compile()
    outcomes: dict[tuple, float] = {}

    def walk(slot: int, prefix: tuple, prob: float) -> None:
        p = sampler.probs(logits[slot])
        by_token = {compiled.slot_tokens[c]: c for c in reversed(compiled.children[slot])}
        for token in range(p.numel()):
            q = prob * float(p[token])
            if q == 0:
                continue
            if token in by_token:
                walk(by_token[token], prefix + (token,), q)
            else:
                outcomes[prefix + (token,)] = outcomes.get(prefix + (token,), 0.0) + q

    walk(0, (), 1.0)
    return outcomes


FIXED_TREE = DraftTree(
    np.array([2, 0, 5, 1, 3, 3, 0, 4]),
    np.array([-1, -1, -1, 0, 0, 1, 3, 3]),
)


@pytest.mark.parametrize("temperature,top_p,top_k", [(0.7, 0.8, 0), (1.0, 1.0, 0), (1.3, 1.0, 4)])
def test_sampling_acceptance_has_the_model_distribution(temperature, top_p, top_k):
    vocab, n = 6, 20_000
    torch.manual_seed(3)
    logits = torch.randn(1 + len(FIXED_TREE), vocab) * 1.5
    logits[0, 2] += 1.0  # make the first child likely, so deeper levels are exercised
    sampler = Sampler(temperature, top_k, top_p)
    compiled = FIXED_TREE.compile()
    generator = torch.Generator().manual_seed(0)
    counts, depths = Counter(), Counter()
    for _ in range(n):
        slots, tokens = accept_sampling(logits, compiled, sampler, generator)
        assert len(slots) == len(tokens) and slots[0] == 0
        assert [compiled.slot_tokens[s] for s in slots[1:]] == tokens[:-1]
        counts[tuple(tokens)] += 1
        depths[len(slots) - 1] += 1
    assert depths[2] > 0 and depths[0] > 0  # both deep acceptance and immediate rejection happen
    assert chi_square_p(counts, sequential_outcomes(logits, FIXED_TREE, sampler), n) > 1e-3


def test_sampling_never_accepts_a_filtered_token():
    logits = torch.tensor([[5.0, 4.0, -3.0, -3.0]] * 3)
    tree = DraftTree(np.array([3, 2]), np.array([-1, -1])).compile()
    generator = torch.Generator().manual_seed(1)
    sampler = Sampler(temperature=1.0, top_p=0.9)
    for _ in range(500):
        slots, tokens = accept_sampling(logits, tree, sampler, generator)
        assert slots == [0] and tokens[0] in (0, 1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.8), (1.0, 0, 1.0), (0.5, 5, 0.9),
                                                     (2.0, 3, 1.0), (1.0, 1, 0.5)])
def test_sampler_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList,
                                                        TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    want = torch.softmax(warpers(None, logits.double()[None])[0], dim=-1)
    torch.testing.assert_close(Sampler(temperature, top_k, top_p).probs(logits), want)


@st.composite
def tree_and_logits(draw):
    vocab = draw(st.integers(2, 5))
    n = draw(st.integers(0, 10))
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**16))
    logits = torch.randn(1 + n, vocab, generator=torch.Generator().manual_seed(seed))
    return DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64)), logits


@settings(max_examples=200, deadline=None)
@given(tree_and_logits())
def test_greedy_accepts_the_longest_argmax_path(case):
    tree, logits = case
    best = logits.argmax(-1).tolist()
    # Brute force: a node is reachable if every node on its path is its parent slot's argmax and
    # no earlier sibling proposes the same token; take the deepest reachable one.
    reachable = [0]
    for node in range(len(tree)):
        parent_slot = int(tree.parents[node]) + 1
        earlier_twin = any(int(tree.parents[j]) + 1 == parent_slot and tree.tokens[j] == tree.tokens[node]
                           for j in range(node))
        if parent_slot in reachable and best[parent_slot] == tree.tokens[node] and not earlier_twin:
            reachable.append(node + 1)
    deepest = max(reachable, key=lambda s: 0 if s == 0 else int(tree.depths[s - 1]))
    want_slots = [0] + [n + 1 for n in tree.path_to(deepest - 1)] if deepest else [0]
    slots, tokens = accept_greedy(logits, tree.compile())
    assert slots == want_slots
    assert tokens == [int(tree.tokens[s - 1]) for s in slots[1:]] + [best[slots[-1]]]

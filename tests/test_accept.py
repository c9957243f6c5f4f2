"""Acceptance rules: greedy picks the longest argmax path; sampling is exactly the model's distribution."""

from __future__ import annotations

import functools
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


# --- stochastic drafts: tokens sampled from a draft distribution q, kept with q ----------------

DRAW_VOCAB = 5
# Draft distributions: different from the model's, with zeros where the model has mass and mass
# where the model's filtered distribution has none.
Q_ROWS = torch.tensor([[0.45, 0.3, 0.2, 0.05, 0.0],
                       [0.1, 0.0, 0.5, 0.2, 0.2]])


@functools.lru_cache(maxsize=None)
def path_logits(path: tuple[int, ...]) -> torch.Tensor:
    """The test's "model": fixed logits for every path (a function of the path alone, as a real
    model's are), whatever tree the path sits in. Not to be modified (cached)."""
    seed = hash(path) % (2**31)
    return torch.randn(DRAW_VOCAB, generator=torch.Generator().manual_seed(seed)) * 1.5


def tree_logits(tree: DraftTree) -> torch.Tensor:
    """The model's logits at every slot of ``tree``."""
    return torch.stack([path_logits(())] + [path_logits(path) for path in tree.node_paths()])


def drafted_tree(chains: list[tuple[int, ...]], draws: list[tuple[tuple[int, ...], int, int]],
                 deterministic: list[tuple[int, ...]] = ()) -> DraftTree:
    """The trie of ``chains`` then ``deterministic`` paths, carrying ``draws`` = ``(anchor path,
    token, q row)`` in draw order."""
    from tiny_models import trie_tree

    from restdecode.drafting.draws import Draws

    tree = trie_tree(list(chains) + list(deterministic))
    node_of = {path: node for node, path in enumerate(tree.node_paths())} | {(): -1}
    anchors = [node_of[anchor] for anchor, _, _ in draws]
    return tree.with_draws(Draws(anchors, [len(anchor) for anchor, _, _ in draws],
                                 [token for _, token, _ in draws], [row for _, _, row in draws],
                                 Q_ROWS))


def chain_draft(x):
    """A two-token chain: x[0] ~ q0 below the root, x[1] ~ q1 below it."""
    return drafted_tree([tuple(x)], [((), x[0], 0), ((x[0],), x[1], 1)])


def three_chains_draft(x):
    """Three i.i.d. chains (x[i] ~ q0, then x[3 + i] ~ q1 below it): duplicates share a node,
    which then holds several draws."""
    chains = [(x[i], x[3 + i]) for i in range(3)]
    draws = [((), x[i], 0) for i in range(3)] + [((x[i],), x[3 + i], 1) for i in range(3)]
    return drafted_tree(chains, draws)


def mixed_draft(x):
    """Two draws below the root (one continued by a draw below it) and deterministic
    (retrieval-like) paths (1,) and (3, 0) after them; a deterministic token equal to a draw
    shares its node, which stays a draw."""
    return drafted_tree([(x[0], x[2]), (x[1],)], [((), x[0], 0), ((), x[1], 0), ((x[0],), x[2], 1)],
                        deterministic=[(1,), (3, 0)])


def root_draws_only(x):
    """Draws below the root with no node at all: an accepted draw is the bonus token."""
    from restdecode.drafting.draws import Draws

    return DraftTree.empty().with_draws(Draws([-1, -1], [0, 0], list(x), [0, 1], Q_ROWS))


DRAFTS = {"chain": (chain_draft, [0, 1]), "three_chains": (three_chains_draft, [0, 0, 0, 1, 1, 1]),
          "mixed": (mixed_draft, [0, 0, 1]), "root_draws_only": (root_draws_only, [0, 1])}


LENGTH = 3  # tokens compared: the deepest draft (2) plus the bonus


def model_sequences(sampler: Sampler) -> dict:
    """The model's own distribution of its next ``LENGTH`` tokens, sampled one by one."""
    import itertools

    expected = {}
    for sequence in itertools.product(range(DRAW_VOCAB), repeat=LENGTH):
        chance = 1.0
        for depth, token in enumerate(sequence):
            chance *= float(sampler.probs(path_logits(sequence[:depth]))[token])
        expected[sequence] = chance
    return expected


@functools.lru_cache(maxsize=None)
def verified_draft(name: str, drawn: tuple[int, ...]):
    """The draft ``name`` makes of ``drawn``, compiled, with the model's logits at its slots."""
    tree = DRAFTS[name][0](drawn)
    return tree.compile(), tree_logits(tree)


@functools.lru_cache(maxsize=None)
def model_probs(sampler: Sampler, path: tuple[int, ...]) -> np.ndarray:
    return sampler.probs(path_logits(path)).numpy()


@pytest.mark.parametrize("name,temperature,top_p", [
    ("chain", 1.0, 1.0), ("chain", 0.8, 0.7), ("three_chains", 0.8, 0.7), ("mixed", 1.0, 1.0),
    ("mixed", 0.8, 0.7), ("root_draws_only", 0.8, 0.7)])
def test_sampled_drafts_keep_the_model_distribution(name, temperature, top_p):
    """Each trial samples a fresh draft (as a draft model does) and accepts against it; what the
    step emits, continued by plain sampling to ``LENGTH`` tokens (the steps after it), is
    distributed as the model's own sampling. (Per step alone it is not: with random drafts the
    step's length depends on what was drawn, which the first token's distribution hides.)"""
    rows = DRAFTS[name][1]
    sampler, n = Sampler(temperature, 0, top_p), 20_000
    rng = np.random.default_rng(5)
    q = Q_ROWS.double().numpy()
    draws = np.stack([rng.choice(DRAW_VOCAB, size=n, p=q[row]) for row in rows], axis=1)
    generator = torch.Generator().manual_seed(11)
    counts, accepted_draws = Counter(), 0
    for drawn in map(tuple, draws.tolist()):
        compiled, logits = verified_draft(name, drawn)
        slots, tokens = accept_sampling(logits, compiled, sampler, generator)
        assert [compiled.slot_tokens[s] for s in slots[1:]] == tokens[:-1]
        accepted_draws += tokens[0] == drawn[0]
        while len(tokens) < LENGTH:
            tokens.append(int(rng.choice(DRAW_VOCAB, p=model_probs(sampler, tuple(tokens)))))
        counts[tuple(tokens[:LENGTH])] += 1
    assert accepted_draws > n // 10  # the draws really were accepted, often
    assert chi_square_p(counts, model_sequences(sampler), n) > 1e-3


def test_a_draw_is_accepted_by_the_ratio_rule_not_the_deterministic_one():
    """q = p: the drawn token is always accepted (the deterministic rule would take it with
    probability p(x) only), whichever it is."""
    from restdecode.drafting.draws import Draws

    logits = torch.tensor([[1.0, 0.5, -0.5, 0.0]])
    p = Sampler().probs(logits[0]).float()
    generator = torch.Generator().manual_seed(0)
    for token in range(4):
        tree = DraftTree.empty().with_draws(Draws([-1], [0], [token], [0], p[None]))
        for _ in range(50):
            assert accept_sampling(logits, tree.compile(), Sampler(), generator) == ([0], [token])


@settings(max_examples=100, deadline=None)
@given(tree_and_logits(), st.integers(0, 2**16))
def test_greedy_ignores_draws(case, seed):
    from restdecode.drafting.draws import Draws

    tree, logits = case
    vocab = logits.shape[1]
    rng = np.random.default_rng(seed)
    q = torch.tensor(rng.dirichlet(np.ones(vocab)), dtype=torch.float32)[None]
    anchors = [int(a) for a in rng.integers(-1, len(tree), 3)]
    depths = [0 if a < 0 else int(tree.depths[a]) for a in anchors]
    drawn = tree.with_draws(Draws(anchors, depths, rng.integers(0, vocab, 3), [0, 0, 0], q))
    assert accept_greedy(logits, drawn.compile()) == accept_greedy(logits, tree.compile())

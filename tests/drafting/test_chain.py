"""The draft chain: untrained it repeats the model's next-token guess at every depth; its tree,
grown in full, keeps exactly the most probable paths a brute-force walk of every path finds;
rows drafted together equal rows drafted alone; a trained chain loads onto its model only, and
through the loader shared with draft heads. (test_heads checks greedy identity with a chain.)"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tiny_models import BYTE_VOCAB, tiny_model
from restdecode.drafting.base import StepFeedback
from restdecode.drafting.chain import ChainDrafter, DraftChain, load_chain
from restdecode.drafting.early_exit import model_fingerprint, save_exit_head
from restdecode.drafting.heads import hidden_drafter, load_hidden_drafter
from restdecode.errors import ModelError

@functools.lru_cache(maxsize=None)
def model_for(arch: str, seed: int = 0):
    return tiny_model(arch, vocab_size=BYTE_VOCAB, layers=2, sliding_window=4, seed=seed)


def random_chain(model, depths: int = 3, vocabulary: int = 40, seed: int = 1,
                 spread: float = 0.5) -> DraftChain:
    torch.manual_seed(seed)
    vocab = torch.randperm(BYTE_VOCAB)[:vocabulary].sort().values
    chain = DraftChain.for_model(model, vocab, depths)
    with torch.no_grad():
        chain.weight.normal_(0, spread)
        chain.bias.normal_(0, spread)
    return chain


def test_an_untrained_chain_repeats_the_models_next_token_guess():
    model = model_for("llama")
    vocab = torch.arange(0, BYTE_VOCAB, 2)
    chain = DraftChain.for_model(model, vocab, depths=2)
    hidden = torch.randn(5, model.config.hidden_size)
    tokens = torch.randint(0, BYTE_VOCAB, (5, 2))
    with torch.no_grad():
        logits = chain(hidden, tokens)
        want = model.lm_head(hidden)[:, vocab]
    assert logits.shape == (5, 2, vocab.numel())
    for depth in range(2):
        torch.testing.assert_close(logits[:, depth], want)


def _drafter(chain, hidden, **options) -> ChainDrafter:
    drafter = ChainDrafter(chain, **options)
    drafter.observe(StepFeedback(committed=[7], hidden=hidden))
    return drafter


@settings(max_examples=40, deadline=None)
@given(depths=st.integers(1, 3), top_k=st.integers(1, 3), budget=st.integers(0, 20),
       seed=st.integers(0, 1000))
@example(depths=3, top_k=2, budget=11, seed=0)  # float32 paths differing by 1.4e-4 at 1e-7
def test_a_fully_grown_tree_keeps_the_most_probable_paths(depths, top_k, budget, seed):
    """With every path grown (a beam of top_k ** depths, no probability floor), the kept nodes
    are the ``budget`` most probable of all paths, each found by stepping the chain along it."""
    model = model_for("llama")
    chain = random_chain(model, depths=depths, seed=seed, spread=1.0)
    hidden = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
    tree = _drafter(chain, hidden, budget=budget, top_k=top_k, beam=top_k ** depths,
                    min_probability=0.0).propose([3, 5, 9])

    def children(path: tuple[int, ...]) -> list[tuple[int, float]]:
        state, reads = hidden.reshape(1, -1), [9, *path]
        with torch.no_grad():
            for depth, token in enumerate(reads):
                state, logits = chain.step(state, torch.tensor([token]), depth)
        top = torch.softmax(logits[0], -1).topk(top_k)
        return [(int(chain.vocab_ids[i]), float(p)) for p, i in zip(top.values, top.indices)]

    every = {}
    frontier = [((), 1.0)]
    for _ in range(depths):
        grown = []
        for path, probability in frontier:
            for token, p in children(path):
                grown.append(((*path, token), probability * p))
        every.update(grown)
        frontier = grown
    best = sorted(every.values(), reverse=True)
    assert len(tree) == min(budget, len(best))
    kept = []
    for node in range(len(tree)):
        path, walk = [], node
        while walk >= 0:
            path.append(walk)
            walk = int(tree.parents[walk])
        assert int(tree.parents[node]) < node  # parents first: prefix-closed
        tokens = tuple(int(tree.tokens[n]) for n in reversed(path))
        kept.append(float(np.prod(tree.scores[path])))
        # float32: the drafter steps its paths padded together, the walk one at a time, so the
        # products differ in the last digits (1.4e-4 relative at 1e-7, hypothesis found).
        assert kept[-1] == pytest.approx(every[tokens], rel=1e-3, abs=1e-9)
    np.testing.assert_allclose(sorted(kept, reverse=True), best[:len(tree)], rtol=1e-3, atol=1e-9)


def test_the_beam_the_floor_and_the_depths_bound_how_far_the_tree_grows():
    model = model_for("llama")
    chain = random_chain(model, depths=3)
    hidden = torch.randn(model.config.hidden_size)
    narrow = _drafter(chain, hidden, budget=64, top_k=3, beam=1).propose([9])
    assert len(narrow) == 3 + 3 + 3  # one path grown per depth, three children each
    assert len(_drafter(chain, hidden, budget=64, top_k=3, beam=2, min_probability=1.1
                        ).propose([9])) == 3  # nothing likely enough to grow past depth 1
    assert len(_drafter(chain, hidden, budget=64, top_k=3, beam=2, depths=1
                        ).propose([9])) == 3  # the chain's first depth alone
    assert len(ChainDrafter(chain).propose([9])) == 0  # no hidden state yet


def test_merged_with_retrieval_the_engine_drafts_the_chains_first_depth_only():
    from tiny_models import byte_tokenizer
    from restdecode.drafting.defaults import MERGED_CHAIN_DEPTHS
    from restdecode.engine import Engine

    model = model_for("llama")
    chain = random_chain(model, depths=3, spread=0.05)  # confident paths: they grow past depth 1
    hidden = torch.randn(model.config.hidden_size)
    alone = hidden_drafter(chain, budget=64)  # the chain alone keeps ChainDrafter's depths
    alone.observe(StepFeedback(committed=[7], hidden=hidden))
    assert (alone.propose([9]).parents >= 0).any()
    engine = Engine(model, byte_tokenizer(), draft_heads=chain, budget=12)
    merged = engine.new_drafter()
    (inside,) = [d for d in merged.drafters if isinstance(d, ChainDrafter)]
    assert inside.depths == MERGED_CHAIN_DEPTHS == 1
    inside.observe(StepFeedback(committed=[7], hidden=hidden))
    tree = inside.propose([9])
    assert len(tree) and (tree.parents == -1).all()


@pytest.mark.parametrize("rows", [2, 3, 5])
def test_rows_stepped_together_equal_rows_stepped_alone(rows):
    """(Two or three rows are padded to four for a faster kernel.)"""
    model = model_for("llama")
    chain = random_chain(model)
    states = torch.randn(rows, model.config.hidden_size)
    tokens = torch.randint(0, BYTE_VOCAB, (rows,))
    with torch.no_grad():
        together = chain.step(states, tokens, 1)
        for row in range(rows):
            alone = chain.step(states[row:row + 1], tokens[row:row + 1], 1)
            assert torch.allclose(alone[0][0], together[0][row], atol=1e-5)
            assert torch.allclose(alone[1][0], together[1][row], atol=1e-5)


def test_a_trained_chain_loads_onto_its_model_only(tmp_path):
    model, other = model_for("llama"), model_for("llama", seed=5)
    chain = random_chain(model)
    facts = {"kind": "chain", "heads": 3, "vocabulary": 40,
             "base_fingerprint": model_fingerprint(model)}
    save_exit_head(tmp_path / "c", chain, facts)
    loaded = load_hidden_drafter(model, tmp_path / "c")
    assert isinstance(loaded, DraftChain) and loaded.depths == 3
    assert isinstance(hidden_drafter(loaded, budget=5), ChainDrafter)
    hidden, tokens = torch.randn(2, model.config.hidden_size), torch.randint(0, 99, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(hidden, tokens), chain(hidden, tokens))
    with pytest.raises(ModelError, match="trained on model"):
        load_chain(other, tmp_path / "c")

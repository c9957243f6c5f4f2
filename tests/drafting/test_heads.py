"""Draft heads: the tree of their best paths is what a brute-force search over all paths keeps,
an untrained head repeats the model's next-token guess, the loop hands a heads drafter exactly
the hidden state that chose the pending token, greedy output with heads drafting stays plain
greedy's on Llama, Qwen2 and Gemma 3 (and so does a draft chain's), and trained heads load
only onto their model."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model
from restdecode.batch import BatchDecoder, BatchRequest
from restdecode.decode import generate
from restdecode.drafting import CombinedDrafter, ContextDrafter, DraftTree
from restdecode.drafting.chain import ChainDrafter
from restdecode.drafting.early_exit import model_fingerprint, save_exit_head
from restdecode.drafting.heads import (DraftHeads, HeadsDrafter, best_paths, frequent_tokens,
                                       load_heads)
from restdecode.errors import DecodingError, ModelError

ARCHS = ["llama", "qwen2", "gemma3"]


@functools.lru_cache(maxsize=None)
def model_for(arch: str, seed: int = 0):
    return tiny_model(arch, vocab_size=BYTE_VOCAB, layers=2, sliding_window=4, seed=seed)


def random_heads(model, heads: int = 3, vocabulary: int = 40, seed: int = 1) -> DraftHeads:
    torch.manual_seed(seed)
    vocab = torch.randperm(BYTE_VOCAB)[:vocabulary].sort().values
    module = DraftHeads.for_model(model, vocab, heads)
    with torch.no_grad():
        module.weight.normal_(0, 0.2)
        module.bias.normal_(0, 0.2)
    return module


@settings(max_examples=60, deadline=None)
@given(depths=st.integers(1, 3), width=st.integers(1, 3), budget=st.integers(0, 12),
       data=st.data())
def test_best_paths_keeps_the_most_probable_paths_prefix_closed(depths, width, budget, data):
    probabilities = np.array(data.draw(st.lists(
        st.lists(st.floats(0.01, 1.0), min_size=width, max_size=width),
        min_size=depths, max_size=depths)))
    tokens = np.arange(depths * width).reshape(depths, width)
    tree = best_paths(probabilities, tokens, budget)
    every_path = sorted((np.prod([probabilities[d, c] for d, c in enumerate(path)])
                         for length in range(1, depths + 1)
                         for path in itertools.product(range(width), repeat=length)),
                        reverse=True)
    assert len(tree) == min(budget, len(every_path))
    kept = [np.prod(tree.scores[_path(tree, node)]) for node in range(len(tree))]
    np.testing.assert_allclose(sorted(kept, reverse=True), every_path[:len(tree)])
    for node, parent in enumerate(tree.parents):
        assert parent < node  # parents first: prefix-closed
        depth = int(tree.depths[node]) - 1
        assert tree.tokens[node] // width == depth  # depth d's node is a head-d candidate
        assert tree.scores[node] == probabilities[depth, tree.tokens[node] % width]


def _path(tree: DraftTree, node: int) -> list[int]:
    path = []
    while node >= 0:
        path.append(node)
        node = int(tree.parents[node])
    return path


def test_untrained_heads_repeat_the_models_next_token_guess():
    model = model_for("llama")
    vocab = torch.arange(0, BYTE_VOCAB, 2)
    heads = DraftHeads.for_model(model, vocab, heads=2)
    hidden = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        logits = heads(hidden)
        want = model.lm_head(hidden)[:, vocab]
    assert logits.shape == (5, 2, vocab.numel())
    for k in range(2):
        torch.testing.assert_close(logits[:, k], want)


def test_frequent_tokens_are_counted_over_the_windows():
    windows = [[3, 3, 7, 1], [7, 3, 9]]
    assert frequent_tokens(windows, 10, 2).tolist() == [3, 7]
    assert frequent_tokens(windows, 10, 4).tolist() == [1, 3, 7, 9]
    assert frequent_tokens(windows, 10, 5).tolist() == [0, 1, 3, 7, 9]  # ties: lower id first
    assert frequent_tokens(windows, 10, 50).tolist() == list(range(10))


class HiddenSpy:
    """Records, at each proposal, the hidden state handed over and the pending token."""

    reads_hidden_states = True

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, int]] = []
        self._hidden = None

    def propose(self, token_ids):
        self.seen.append((self._hidden, int(token_ids[-1])))
        return DraftTree(np.array([int(token_ids[-1])]), np.array([-1]))  # a guess: often wrong

    def observe(self, feedback):
        self._hidden = feedback.hidden

    def reset(self):
        self._hidden = None


@pytest.mark.parametrize("arch", ARCHS)
def test_the_loop_hands_over_the_hidden_state_that_chose_the_pending_token(arch):
    model = model_for(arch)
    spy = HiddenSpy()
    generate(model, byte_tokenizer(), prompt="tea cup", max_new_tokens=12, drafter=spy)
    assert len(spy.seen) > 3
    for hidden, pending in spy.seen:
        with torch.no_grad():
            assert int(model.lm_head(hidden).argmax()) == pending


@pytest.mark.parametrize("kind", ["heads", "chain"])
@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_heads_drafting_is_plain_greedy(arch, kind):
    from test_chain import random_chain

    model = model_for(arch)
    plain = generate(model, byte_tokenizer(), prompt="alpha beta alpha", max_new_tokens=24,
                     drafter=None)
    heads = (HeadsDrafter(random_heads(model), budget=8, top_k=3) if kind == "heads"
             else ChainDrafter(random_chain(model), budget=8, top_k=3))
    merged = CombinedDrafter([ContextDrafter(budget=8), heads], budget=10)
    for drafter in (heads, merged):
        result = generate(model, byte_tokenizer(), prompt="alpha beta alpha",
                          max_new_tokens=24, drafter=drafter)
        assert result.token_ids == plain.token_ids
        assert max(result.stats.tree_size_per_step) > 1  # the heads did draft


def test_batched_decoding_refuses_a_heads_drafter():
    model = model_for("llama")
    decoder = BatchDecoder(model, byte_tokenizer())
    with pytest.raises(DecodingError, match="one at a time"):
        decoder.add(BatchRequest(prompt="tea", drafter=HeadsDrafter(random_heads(model))))


def test_trained_heads_load_onto_their_model_only(tmp_path):
    model, other = model_for("llama"), model_for("llama", seed=5)
    heads = random_heads(model)
    facts = {"kind": "heads", "heads": 3, "vocabulary": 40,
             "base_fingerprint": model_fingerprint(model)}
    save_exit_head(tmp_path / "h", heads, facts)
    loaded, read = load_heads(model, tmp_path / "h")
    assert read["heads"] == 3
    hidden = torch.randn(2, model.config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(hidden), heads(hidden))
    with pytest.raises(ModelError, match="trained on model"):
        load_heads(other, tmp_path / "h")


@pytest.mark.parametrize("heads", [1, 2, 3, 5])
def test_one_hidden_state_gives_every_heads_logits_as_a_batch_does(heads):
    """Decoding's single hidden state (its 2 or 3 head rows padded to 4 for a faster kernel)
    gives the same logits as the same state inside a batch (training's shape)."""
    model = model_for("llama")
    head = random_heads(model, heads=heads)
    hidden = torch.randn(5, model.config.hidden_size)
    with torch.no_grad():
        batched = head(hidden)
        for row in range(5):
            alone = head(hidden[row])
            assert alone.shape == (heads, head.vocab_ids.numel())
            assert torch.allclose(alone, batched[row], atol=1e-5)

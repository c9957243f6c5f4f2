"""Tree verification computes, at every slot, what sequential decoding of that slot's path computes;
committing an accepted path leaves the cache a sequential run over the committed tokens would leave."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import random_trees, tiny_model
from restdecode.drafting.tree import DraftTree
from restdecode.errors import DecodingError
from restdecode.verify import cache_kwargs, commit, new_cache, trim_cache, verify

VOCAB = 64
CASES = [(arch, attn) for arch in ("llama", "qwen2", "gemma3") for attn in ("sdpa", "eager")]


@functools.lru_cache(maxsize=None)
def model_for(arch: str, attn: str):
    return tiny_model(arch, attn=attn, vocab_size=VOCAB)


def trees(max_nodes: int = 12):
    return random_trees(VOCAB, max_nodes)


def prefill(model, tokens: list[int]):
    """Cache holding ``tokens`` built by our cache helpers (as the decoder does)."""
    cache = new_cache(model)
    model(input_ids=torch.tensor([tokens]), **cache_kwargs(model, cache), use_cache=True)
    trim_cache(cache)
    return cache


def sequential_slot_logits(model, prefix: list[int], pending: int, tree: DraftTree) -> torch.Tensor:
    """Oracle: logits of every slot by plain one-token-at-a-time decoding of the slot's path."""
    from transformers import DynamicCache

    base = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([prefix]), **cache_kwargs(model, base), use_cache=True)
    slot_tokens = [pending] + tree.tokens.tolist()
    slot_parents = [-1] + (tree.parents + 1).tolist()
    caches, rows = [], []
    for slot, token in enumerate(slot_tokens):
        cache = copy.deepcopy(base if slot == 0 else caches[slot_parents[slot]])
        out = model(input_ids=torch.tensor([[token]]), **cache_kwargs(model, cache), use_cache=True)
        caches.append(cache)
        rows.append(out.logits[0, -1].float())
    return torch.stack(rows)


@pytest.mark.parametrize("arch,attn", CASES)
@settings(max_examples=15, deadline=None)
@given(tree=trees(), prefix=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=14),
       pending=st.integers(0, VOCAB - 1))
def test_tree_logits_equal_sequential_decoding(arch, attn, tree, prefix, pending):
    model = model_for(arch, attn)
    with torch.inference_mode():
        cache = prefill(model, prefix)
        got = verify(model, cache, pending, tree.compile(), past_length=len(prefix))
        want = sequential_slot_logits(model, prefix, pending, tree)
    assert got.shape == (1 + len(tree), VOCAB) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("length", [0, 1, 5])
def test_chains_use_the_models_causal_mask_where_all_layers_are_full(arch, length, monkeypatch):
    import restdecode.verify as verify_module

    built = []
    real = verify_module.tree_attention_mask
    monkeypatch.setattr(verify_module, "tree_attention_mask",
                        lambda *args: built.append(1) or real(*args))
    model = model_for(arch, "sdpa")
    tree = DraftTree.chain(list(range(3, 3 + length)))
    prefix = [5, 9, 2, 7]
    with torch.inference_mode():
        got = verify(model, prefill(model, prefix), 11, tree.compile(), past_length=len(prefix))
        want = sequential_slot_logits(model, prefix, 11, tree)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert bool(built) == (arch == "gemma3")  # Gemma 3 has sliding-window layers


def test_gemma3_deep_tree_crosses_sliding_window():
    """A chain deeper than the sliding window (6): slots must stop seeing their far ancestors."""
    model = model_for("gemma3", "sdpa")
    rng = np.random.default_rng(0)
    chain = rng.integers(0, VOCAB, 9)
    tree = DraftTree(np.concatenate([chain, chain[:3] + 1]),
                     np.concatenate([np.arange(-1, 8), [2, 9, 10]]))
    prefix = rng.integers(0, VOCAB, 8).tolist()
    with torch.inference_mode():
        got = verify(model, prefill(model, prefix), 5, tree.compile(), past_length=len(prefix))
        want = sequential_slot_logits(model, prefix, 5, tree)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def random_path(tree: DraftTree, rng: np.random.Generator) -> list[int]:
    """Slots ``[0, ...]`` of a random root-to-node path (possibly just the root)."""
    path, slot = [0], 0
    while tree.children[slot] and rng.random() < 0.8:
        slot = int(rng.choice(tree.children[slot]))
        path.append(slot)
    return path


@pytest.mark.parametrize("arch,attn", CASES)
def test_commit_leaves_the_cache_of_a_sequential_run(arch, attn):
    model = model_for(arch, attn)
    rng = np.random.default_rng(1)
    context = rng.integers(0, VOCAB, 5).tolist()
    pending = int(rng.integers(VOCAB))
    with torch.inference_mode():
        cache = prefill(model, context)
        for _ in range(8):
            n = int(rng.integers(0, 10))
            parents = [int(rng.integers(-1, i)) for i in range(n)]
            tree = DraftTree(rng.integers(0, VOCAB, n), np.array(parents, dtype=np.int64))
            compiled = tree.compile()
            verify(model, cache, pending, compiled, past_length=len(context))
            path = random_path(tree, rng)
            commit(cache, path, compiled.num_slots)
            context += [pending] + [compiled.slot_tokens[s] for s in path[1:]]
            pending = int(rng.integers(VOCAB))
        assert cache.get_seq_length() == len(context)
        from transformers import DynamicCache

        want = DynamicCache(config=model.config)
        for token in context:
            model(input_ids=torch.tensor([[token]]), **cache_kwargs(model, want), use_cache=True)
        for ours, theirs in zip(cache.layers, want.layers):
            assert ours.keys.shape == theirs.keys.shape
            torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ours.values, theirs.values, atol=1e-4, rtol=1e-4)
        # The committed cache must also predict like the sequential one.
        got = model(input_ids=torch.tensor([[pending]]), **cache_kwargs(model, cache)).logits
        ref = model(input_ids=torch.tensor([[pending]]), **cache_kwargs(model, want)).logits
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_unsupported_attention_implementation_is_a_decoding_error():
    model = tiny_model("llama")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(DecodingError, match="attention implementation"):
        new_cache(model)

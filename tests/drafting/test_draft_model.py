"""DraftModelDrafter: a smaller model of the same tokenizer drafts chains or trees; greedy output
stays token-identical and sampled output keeps the target's distribution (alone and merged with
a context drafter); its session rolls back after partial acceptance exactly as a fresh one
would stand; a draft model of another tokenizer is refused."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_accept import chi_square_p
from tiny_models import (BYTE_VOCAB, SAMPLING_PROMPT, SAMPLING_VOCAB, LetterTokenizer,
                         byte_tokenizer, sampling_model_and_distribution, tiny_model)
from restdecode.accept import Sampler
from restdecode.decode import generate
from restdecode.drafting import (CombinedDrafter, ContextDrafter, DraftModelDrafter,
                                 check_same_tokenizer)
from restdecode.errors import ModelError

SHAPES = {"chain": dict(k=4), "tree": dict(k=3, branches=3)}


@functools.lru_cache(maxsize=None)
def byte_model(arch: str, layers: int = 2, seed: int = 0):
    return tiny_model(arch, vocab_size=BYTE_VOCAB, layers=layers, seed=seed, sliding_window=4)


@functools.lru_cache(maxsize=None)
def tokenizer():
    return byte_tokenizer()


def prompts(count: int = 3, seed: int = 7):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, BYTE_VOCAB, int(rng.integers(2, 12))).tolist() for _ in range(count)]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_greedy_with_a_draft_model_is_token_identical_to_plain_greedy(arch, shape):
    """Two drafts: the target itself (every draft accepted: long steps) and a random 1-layer
    model (mostly rejected: a rollback every step)."""
    target = byte_model(arch)
    for draft, agrees in ((target, True), (byte_model(arch, layers=1, seed=5), False)):
        drafter = DraftModelDrafter(draft, **SHAPES[shape])
        steps = tokens = 0
        for prompt in prompts():
            plain = generate(target, tokenizer(), input_ids=prompt, max_new_tokens=30)
            got = generate(target, tokenizer(), input_ids=prompt, drafter=drafter,
                           max_new_tokens=30)
            assert got.token_ids == plain.token_ids
            steps, tokens = steps + got.stats.steps, tokens + sum(got.stats.accepted_per_step)
        if agrees:
            assert tokens > 3 * steps


def sampled_counts(arch: str, make_drafter, temperature: float, top_p: float, n: int):
    """The first 3 tokens of ``n`` sampled generations of the vocab-8 model, and their exact
    distribution. Generations run to 4 tokens, so that the first step may accept 2 drafts."""
    model, expected = sampling_model_and_distribution(temperature, top_p, arch)
    drafter = make_drafter(model, Sampler(temperature, 0, top_p))
    counts, drafted = Counter(), 0
    for seed in range(n):
        result = generate(model, LetterTokenizer(), input_ids=SAMPLING_PROMPT, drafter=drafter,
                          max_new_tokens=4, temperature=temperature, top_p=top_p, seed=seed)
        counts[tuple(result.token_ids[:3])] += 1
        drafted += result.stats.accepted_per_step[0] - 1
    assert drafted > n // 2  # drafts were often accepted
    return counts, expected


def small_draft(arch: str):
    return tiny_model(arch, vocab_size=SAMPLING_VOCAB, init_std=0.15, seed=9, layers=1)


@pytest.mark.parametrize("arch,shape", [("llama", dict(k=3)), ("qwen2", dict(k=2, branches=3))])
def test_sampled_generation_with_a_draft_model_has_the_model_distribution(arch, shape):
    n = 1_000
    counts, expected = sampled_counts(
        arch, lambda model, sampler: DraftModelDrafter(small_draft(arch), sampler=sampler, seed=1,
                                                       **shape),
        0.9, 0.9, n)
    assert chi_square_p(counts, expected, n) > 1e-3


def test_a_draft_model_merged_with_a_context_drafter_stays_lossless():
    n = 1_000

    def combined(model, sampler):
        return CombinedDrafter([DraftModelDrafter(small_draft("qwen2"), sampler=sampler, seed=2,
                                                  k=2, branches=2), ContextDrafter(budget=8)],
                               budget=8)

    counts, expected = sampled_counts("qwen2", combined, 1.0, 1.0, n)
    assert chi_square_p(counts, expected, n) > 1e-3
    target = byte_model("llama")
    drafter = CombinedDrafter([DraftModelDrafter(target, k=4), ContextDrafter(budget=8)], budget=8)
    for prompt in prompts():
        plain = generate(target, tokenizer(), input_ids=prompt, max_new_tokens=30)
        got = generate(target, tokenizer(), input_ids=prompt, drafter=drafter, max_new_tokens=30)
        assert got.token_ids == plain.token_ids


@functools.lru_cache(maxsize=None)
def draft_backends(arch: str):
    """Two backends of one draft model: the drafter's and the fresh reference's."""
    if arch != "llamacpp":
        model = byte_model(arch, layers=1, seed=5)
        return model, model
    pytest.importorskip("llama_cpp")
    import tempfile
    from pathlib import Path

    from tiny_gguf import write_tiny_llama_gguf
    from restdecode.backends.llamacpp import LlamaCppBackend

    path = write_tiny_llama_gguf(Path(tempfile.mkdtemp(prefix="draft-gguf-")) / "d.gguf",
                                 vocab_size=BYTE_VOCAB)
    return LlamaCppBackend(path, n_threads=1), LlamaCppBackend(path, n_threads=1)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("arch", ["llama", "gemma3", "llamacpp"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(3, BYTE_VOCAB - 1), min_size=1, max_size=12),
       steps=st.lists(st.tuples(st.integers(0, 4), st.integers(3, BYTE_VOCAB - 1)), min_size=1,
                      max_size=5))
def test_rollback_after_partial_acceptance_equals_a_fresh_drafter(arch, shape, prompt, steps):
    """After each step keeps some drafted tokens and adds a bonus, the drafter (its session
    rolled back, never prefilled again) drafts what a fresh drafter on that context drafts."""
    mine, reference = draft_backends(arch)
    drafter = DraftModelDrafter(mine, **SHAPES[shape])
    context = list(prompt) + [5]
    tree = drafter.propose(context)
    for accepted, bonus in steps:
        path = tree.path_to(min(accepted, len(tree)) - 1) if accepted and len(tree) else []
        context += [int(tree.tokens[node]) for node in path] + [bonus]
        tree = drafter.propose(context)
        session = drafter.session
        fresh = DraftModelDrafter(reference, **SHAPES[shape])
        want = fresh.propose(context)
        assert session.past_length == fresh.session.past_length
        assert tree.tokens.tolist() == want.tokens.tolist()
        assert tree.parents.tolist() == want.parents.tolist()
        np.testing.assert_allclose(tree.scores, want.scores,
                                   atol=2e-3 if arch == "llamacpp" else 1e-5)


def test_sampled_drafts_carry_their_draws_and_distributions():
    draft = byte_model("llama", layers=1, seed=5)
    context = prompts(1)[0] + [5]
    chain = DraftModelDrafter(draft, k=4, sampler=Sampler(0.8), seed=0).propose(context)
    assert chain.draws.tokens.tolist() == chain.tokens.tolist()
    assert chain.draws.anchors.tolist() == [-1, 0, 1, 2]
    tree = DraftModelDrafter(draft, k=3, branches=4, sampler=Sampler(0.8), seed=0).propose(context)
    assert len(tree.draws) == 4 * 3  # one draw per chain per level, duplicates included
    compiled = tree.compile()
    assert [len(draws) for draws in compiled.slot_draws][0] == 4
    for slot, draws in enumerate(compiled.slot_draws):
        for token, row in draws:
            child = compiled.child_with_token(slot, token)
            assert child is not None
            assert tree.scores[child - 1] == pytest.approx(float(tree.draws.q[row, token]))
    torch.testing.assert_close(tree.draws.q.sum(dim=1), torch.ones(len(tree.draws.q)))
    greedy = DraftModelDrafter(draft, k=3, branches=4).propose(context)
    assert greedy.draws is None and len(set(greedy.tokens[greedy.parents == -1].tolist())) == 4


def test_a_draft_model_of_another_tokenizer_is_refused_naming_both():
    bytes_, more = tokenizer(), byte_tokenizer()
    more.add_tokens(["hello", "world"])
    with pytest.raises(ModelError, match=r"draft .*261 tokens.* target.*259 tokens"):
        DraftModelDrafter(byte_model("llama", layers=1), target_tokenizer=bytes_,
                          draft_tokenizer=more)
    check_same_tokenizer(bytes_, byte_tokenizer())  # the same vocabulary: accepted
    other = byte_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    with pytest.raises(ModelError, match="differ"):
        check_same_tokenizer(bytes_, other)

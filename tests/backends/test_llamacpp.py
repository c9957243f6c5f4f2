"""The llama.cpp backend: tree verification in one batch equals sequential evaluation, commits
keep exactly the accepted path, greedy output equals llama.cpp's own greedy, and sampling keeps
the model's distribution. Fast cases run on a tiny random GGUF; the real SmolLM2 (f32 and Q4_1)
and Gemma 3 (vocabulary 262,144) run under the ``assets`` marker."""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("llama_cpp")

from test_accept import chi_square_p  # noqa: E402
from tiny_gguf import write_tiny_llama_gguf  # noqa: E402
from tiny_models import OracleDrafter, RandomTreeDrafter, trie_tree  # noqa: E402

from restdecode.backends.llamacpp import (LlamaCppBackend, _leaf_membership,  # noqa: E402
                                          requantize)
from restdecode.decode import generate  # noqa: E402
from restdecode.drafting.tree import DraftTree  # noqa: E402
from restdecode.errors import DecodingError, ModelError  # noqa: E402

VOCAB = 64


@functools.lru_cache(maxsize=None)
def tiny_gguf(vocab_size: int = VOCAB, seed: int = 0):
    import tempfile
    from pathlib import Path

    directory = Path(tempfile.mkdtemp(prefix="tiny-gguf-"))
    return write_tiny_llama_gguf(directory / f"tiny-{vocab_size}-{seed}.gguf",
                                 vocab_size=vocab_size, seed=seed)


@functools.lru_cache(maxsize=None)
def tiny_backend(vocab_size: int = VOCAB, seed: int = 0) -> LlamaCppBackend:
    return LlamaCppBackend(tiny_gguf(vocab_size, seed), n_threads=1)


@functools.lru_cache(maxsize=None)
def reference_backend(vocab_size: int = VOCAB, seed: int = 0) -> LlamaCppBackend:
    """A second context on the same file: sequential evaluation, never disturbing the first."""
    return LlamaCppBackend(tiny_gguf(vocab_size, seed), n_threads=1)


class IdTokenizer:
    """Decoding only (the tests pass input_ids): one letter per token id."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(0x100 + int(i)) for i in ids)


def sequential_logits(tokens: list[int]) -> torch.Tensor:
    """Logits after ``tokens``, evaluated from scratch as a plain prompt."""
    return reference_backend().session().prefill(tokens).clone()


def llama_cpp_greedy(path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """llama-cpp-python's own greedy loop (``Llama.generate``), stopped at an end token."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=1, verbose=False)
    out: list[int] = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        out.append(int(token))
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= max_new_tokens:
            break
    llm.close()
    return out


@st.composite
def trees(draw, max_nodes: int = 10):
    n = draw(st.integers(0, max_nodes))
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    tokens = draw(st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))
    return DraftTree(np.array(tokens, dtype=np.int64), np.array(parents, dtype=np.int64))


def slot_paths(tree) -> list[list[int]]:
    """Slot indices from the root to each slot."""
    paths = []
    for slot, parent in enumerate(tree.slot_parents):
        paths.append([slot] if parent < 0 else paths[parent] + [slot])
    return paths


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=12),
       steps=st.lists(st.tuples(trees(), st.integers(0, 10**6), st.integers(0, VOCAB - 1)),
                      min_size=1, max_size=4))
def test_tree_verification_equals_sequential_evaluation_across_commits(prompt, steps):
    """Every slot's logits equal evaluating its path from scratch, and after committing an
    arbitrary path (not always the main sequence's) the next step still does."""
    session = tiny_backend().session()
    context = list(prompt)
    session.prefill(context)
    for draft, choice, pending in steps:
        tree = draft.compile(torch.device("cpu"))
        logits = session.verify(pending, tree).clone()
        paths = slot_paths(tree)
        slot_tokens = [pending] + tree.node_tokens.tolist()
        for slot, path in enumerate(paths):
            want = sequential_logits(context + [slot_tokens[s] for s in path])
            # A batch of another shape runs through other kernels, over K and V kept in f16
            # (llama.cpp's default cache type): logits move by up to ~1e-3 here (hypothesis once
            # found 1.3e-3); a wrong mask or position moves them by whole units.
            torch.testing.assert_close(logits[slot], want, atol=5e-3, rtol=1e-3)
        kept = paths[choice % len(paths)]
        session.commit(kept)
        context += [slot_tokens[s] for s in kept]
        assert session.past_length == len(context)


def test_leaf_membership_reads_the_paths_to_each_leaf():
    tree = trie_tree([[5, 6], [5, 7, 8], [9]]).compile(torch.device("cpu"))
    membership, leaves = _leaf_membership(tree)
    # slots: 0 root, 1 '5', 2 '6', 3 '7', 4 '8', 5 '9' (trie order); leaves 2, 4, 5
    assert leaves.tolist() == [2, 4, 5]
    assert membership.tolist() == [[True, True, True], [True, True, False], [True, False, False],
                                   [False, True, False], [False, True, False],
                                   [False, False, True]]


def test_greedy_with_drafts_is_token_identical_to_llama_cpp_greedy():
    backend = tiny_backend()
    rng = np.random.default_rng(3)
    steps = tokens = 0
    for run in range(3):
        prompt = rng.integers(3, VOCAB, int(rng.integers(2, 10))).tolist()
        want = llama_cpp_greedy(tiny_gguf(), prompt, 40)
        plain = generate(backend, IdTokenizer(), input_ids=prompt, max_new_tokens=40)
        assert plain.token_ids == want
        drafter = OracleDrafter(len(prompt), want, VOCAB, seed=run)
        got = generate(backend, IdTokenizer(), input_ids=prompt, drafter=drafter,
                       max_new_tokens=40)
        assert got.token_ids == want
        steps, tokens = steps + got.stats.steps, tokens + sum(got.stats.accepted_per_step)
    assert tokens > 1.5 * steps  # drafts were really accepted


def test_sampled_generation_has_the_model_distribution(monkeypatch):
    """The first 3 tokens of a vocabulary-8 model, sampled with random draft trees, against
    the exact distribution from sequential evaluation."""
    from restdecode.accept import Sampler

    vocab, n, temperature = 8, 3_000, 0.8
    backend = LlamaCppBackend(tiny_gguf(vocab, 4), n_threads=1)
    reference = LlamaCppBackend(tiny_gguf(vocab, 4), n_threads=1)
    monkeypatch.setattr(backend, "eos_token_ids", lambda tokenizer=None: set())
    prompt = [1, 5, 3]
    sampler = Sampler(temperature)

    def probs(tokens):
        return sampler.probs(reference.session().prefill(prompt + tokens))

    expected = {}
    p1 = probs([])
    for a in range(vocab):
        p2 = probs([a])
        for b in range(vocab):
            p3 = probs([a, b])
            for c in range(vocab):
                expected[(a, b, c)] = float(p1[a] * p2[b] * p3[c])
    counts, multi = Counter(), 0
    drafter = RandomTreeDrafter(vocab, np.random.default_rng(0))
    for seed in range(n):
        result = generate(backend, IdTokenizer(), input_ids=prompt, drafter=drafter,
                          max_new_tokens=3, temperature=temperature, seed=seed)
        counts[tuple(result.token_ids)] += 1
        multi += result.stats.steps < 2
    assert multi > n // 10  # speculation often accepted a draft token
    assert chi_square_p(counts, expected, n) > 1e-3


def test_a_superseded_session_refuses_to_run():
    backend = tiny_backend()
    first = backend.session()
    first.prefill([3, 4])
    backend.session()
    with pytest.raises(DecodingError, match="superseded"):
        first.verify(5, DraftTree.empty().compile(torch.device("cpu")))


def test_trees_wider_than_the_batch_are_refused():
    backend = tiny_backend()
    session = backend.session()
    session.prefill([3, 4])
    wide = DraftTree(np.full(600, 5), np.full(600, -1)).compile(torch.device("cpu"))
    with pytest.raises(DecodingError, match="exceeds"):
        session.verify(5, wide)


def test_missing_file_and_non_gguf_models_are_clear_errors(tmp_path):
    from restdecode.models import gguf_path

    with pytest.raises(ModelError, match="does not exist"):
        LlamaCppBackend(tmp_path / "missing.gguf")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="GGUF"):
        gguf_path(tmp_path)


def test_requantize_writes_a_loadable_file_of_that_type(tmp_path):
    target = requantize(tiny_gguf(), tmp_path / "tiny-f16.gguf", "f16")
    assert target.stat().st_size < tiny_gguf().stat().st_size  # half-size tensors
    backend = LlamaCppBackend(target, n_threads=1)
    logits = backend.session().prefill([3, 4, 5])
    assert logits.shape == (VOCAB,)
    with pytest.raises(ModelError, match="unknown GGUF tensor type"):
        requantize(tiny_gguf(), tmp_path / "x.gguf", "q9_9")


def test_latency_profile_measures_this_backend():
    from restdecode.latency import measure_profile

    profile = measure_profile(tiny_backend(), widths=(1, 4), cache_lengths=(0, 16), repeats=1,
                              progress=False)
    assert profile.key["backend"] == "llamacpp" and profile.seconds.shape == (2, 2)


# --- real models ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def smollm2(ftype: str | None = None):
    from restdecode.models import gguf_path, load_tokenizer

    return gguf_path(f"smollm2-135m-instruct{':' + ftype if ftype else ''}", quiet=True), \
        load_tokenizer("smollm2-135m-instruct", quiet=True)


def mtbench_prompt_ids(tokenizer, limit: int) -> list[list[int]]:
    from restdecode.decode import prompt_token_ids
    from restdecode.workloads import load_workload

    return [prompt_token_ids(tokenizer, messages=p.messages)
            for p in load_workload("mtbench", limit=limit)]


@pytest.mark.assets
def test_smollm2_f32_with_default_drafts_is_identical_to_llama_cpp_greedy():
    """f32 weights: batched verification changes no greedy choice (MT-Bench 81-83, 64 tokens)."""
    from restdecode.engine import Engine

    path, tokenizer = smollm2("f32")
    engine = Engine(LlamaCppBackend(path), tokenizer, budget=8)
    steps = tokens = 0
    for ids in mtbench_prompt_ids(tokenizer, 3):
        want = llama_cpp_greedy(path, ids, 64)
        got = engine.generate(input_ids=ids, max_new_tokens=64)
        assert got.token_ids == want
        steps, tokens = steps + got.stats.steps, tokens + sum(got.stats.accepted_per_step)
    assert tokens > steps  # some drafts were accepted


@pytest.mark.assets
def test_smollm2_q4_1_plain_loop_is_identical_to_llama_cpp_greedy():
    path, tokenizer = smollm2()
    backend = LlamaCppBackend(path)
    for ids in mtbench_prompt_ids(tokenizer, 2):
        assert generate(backend, tokenizer, input_ids=ids, max_new_tokens=48).token_ids == \
            llama_cpp_greedy(path, ids, 48)


@pytest.mark.assets
def test_gemma3_vocabulary_above_65535_runs_with_drafts():
    from restdecode.drafting import ContextDrafter
    from restdecode.models import load_llamacpp

    backend, tokenizer = load_llamacpp("gemma3-270m", quiet=True)
    assert backend.vocab_size == 262_144
    ids = tokenizer("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")[
        "input_ids"]
    plain = generate(backend, tokenizer, input_ids=ids, max_new_tokens=32)
    assert plain.token_ids == llama_cpp_greedy(backend.path, ids, 32)
    drafted = generate(backend, tokenizer, input_ids=ids, drafter=ContextDrafter(budget=6),
                       max_new_tokens=32)
    assert len(drafted.token_ids) == len(plain.token_ids)
    assert max(drafted.stats.tree_size_per_step) > 0

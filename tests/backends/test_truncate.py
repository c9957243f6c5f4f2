"""Session.truncate: rolling a session back gives exactly what a session that never went past
that length gives (transformers: Llama, Qwen2, Gemma 3 with a window shorter than the sequence;
llama.cpp: a tiny GGUF), after commits of trees and after an uncommitted verification."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiny_models import random_trees, tiny_model
from restdecode.backends import Session, as_backend
from restdecode.drafting.tree import DraftTree
from restdecode.errors import DecodingError

VOCAB = 64
ROLLBACK = 8


@functools.lru_cache(maxsize=None)
def backend(arch: str):
    if arch == "llamacpp":
        pytest.importorskip("llama_cpp")
        import tempfile
        from pathlib import Path

        from tiny_gguf import write_tiny_llama_gguf
        from restdecode.backends.llamacpp import LlamaCppBackend

        path = write_tiny_llama_gguf(Path(tempfile.mkdtemp(prefix="tiny-gguf-")) / "t.gguf",
                                     vocab_size=VOCAB)
        return LlamaCppBackend(path, n_threads=1), LlamaCppBackend(path, n_threads=1)
    model = as_backend(tiny_model(arch, vocab_size=VOCAB, sliding_window=4))
    return model, model


def run_steps(session: Session, context: list[int], steps) -> None:
    """Verify each tree after ``context``'s last token and commit one of its paths; ``context``
    grows by the committed tokens (its last one stays pending)."""
    for tree, choice in steps:
        compiled = tree.compile("cpu")
        session.verify(context[-1], compiled)
        leaf = choice % (len(tree) + 1)  # 0: the root alone
        path = [0] + ([node + 1 for node in tree.path_to(leaf - 1)] if leaf else [])
        session.commit(path)
        context += [int(tree.tokens[slot - 1]) for slot in path[1:]]
        context.append(choice % VOCAB)


def continuation_logits(session: Session, pending: int, tree: DraftTree) -> torch.Tensor:
    return session.verify(pending, tree.compile("cpu")).clone()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "llamacpp"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                               HealthCheck.function_scoped_fixture])
@given(prompt=st.lists(st.integers(3, VOCAB - 1), min_size=1, max_size=10),
       steps=st.lists(st.tuples(random_trees(VOCAB, 5), st.integers(0, 10**6)), max_size=4),
       back=st.integers(0, ROLLBACK), uncommitted=st.one_of(st.none(), random_trees(VOCAB, 5)),
       after=random_trees(VOCAB, 5))
def test_truncate_then_continue_equals_a_session_that_stopped_there(arch, prompt, steps, back,
                                                                    uncommitted, after):
    subject, reference = backend(arch)
    session = subject.session(rollback=ROLLBACK)
    session.prefill(prompt)
    context = list(prompt) + [5]  # the last token is pending
    run_steps(session, context, steps)
    length = max(1, session.past_length - back)
    if uncommitted is not None:  # a verification nobody commits is dropped too
        session.verify(context[-1], uncommitted.compile("cpu"))
    session.truncate(length)
    assert session.past_length == length
    got = continuation_logits(session, context[length], after)
    fresh = reference.session()
    fresh.prefill(context[:length])
    want = continuation_logits(fresh, context[length], after)
    if arch != "llamacpp":
        assert session.cache.get_seq_length() == fresh.cache.get_seq_length()
    # llama.cpp: other batch shapes, other kernels, K and V in f16 (see test_llamacpp).
    tolerance = 5e-3 if arch == "llamacpp" else 1e-4
    torch.testing.assert_close(got, want, atol=tolerance, rtol=1e-3)
    # ... and the session goes on as usual: commit, then the next step.
    kept = [0] + ([1] if len(after) else [])
    session.commit(kept)
    fresh.commit(kept)
    torch.testing.assert_close(continuation_logits(session, 3, after),
                               continuation_logits(fresh, 3, after), atol=tolerance, rtol=1e-3)


def test_a_sliding_window_session_refuses_to_roll_back_past_its_history():
    backend_ = as_backend(tiny_model("gemma3", vocab_size=VOCAB, sliding_window=4))
    session = backend_.session(rollback=2)
    session.prefill(list(range(3, 20)))
    session.truncate(15)  # two back: within its history
    with pytest.raises(DecodingError, match="sliding-window"):
        session.truncate(10)
    assert session.past_length == 15  # nothing changed
    with pytest.raises(DecodingError, match="truncate"):
        session.truncate(16)


def test_full_attention_sessions_roll_back_anywhere():
    session = backend("llama")[0].session()
    session.prefill(list(range(3, 40)))
    session.truncate(2)
    fresh = backend("llama")[1].session()
    fresh.prefill([3, 4])
    tree = DraftTree(np.array([5, 6, 7]), np.array([-1, -1, 0]))
    torch.testing.assert_close(continuation_logits(session, 5, tree),
                               continuation_logits(fresh, 5, tree))

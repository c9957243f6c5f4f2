"""Batched verification on llama.cpp: every row's slots get the logits of evaluating its path
alone, whatever the other rows do (join, leave, commit other paths), commits free what they drop,
and batched greedy decoding equals each request decoded alone (f32 tiny GGUF)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("llama_cpp")

from test_llamacpp import (VOCAB, IdTokenizer, reference_backend, sequential_logits,  # noqa: E402
                           slot_paths, tiny_gguf, trees)
from tiny_models import OracleDrafter  # noqa: E402

from restdecode.backends.llamacpp import MAX_SEQUENCES, LlamaCppBackend  # noqa: E402
from restdecode.batch import BatchRequest, generate_batch  # noqa: E402
from restdecode.decode import generate  # noqa: E402
from restdecode.drafting.tree import DraftTree  # noqa: E402
from restdecode.errors import DecodingError  # noqa: E402

CPU = torch.device("cpu")


@functools.lru_cache(maxsize=None)
def batch_backend() -> LlamaCppBackend:
    """A context of its own: batch sessions here never supersede other tests' sessions."""
    return LlamaCppBackend(tiny_gguf(), n_threads=1)


def seq_cells(backend: LlamaCppBackend, sequence: int) -> int:
    """Highest position sequence ``sequence`` holds (-1: none)."""
    return int(backend._lib.llama_memory_seq_pos_max(backend._memory, sequence))


# An event: ("add", prompts joining together) | ("step", [(tree, choice, pending), ...] per live
# row) | ("remove", k)
events = st.one_of(
    st.tuples(st.just("add"), st.lists(st.lists(st.integers(3, VOCAB - 1), min_size=1,
                                                max_size=8), min_size=1, max_size=2)),
    st.tuples(st.just("step"), st.lists(st.tuples(trees(max_nodes=6), st.integers(0, 10**6),
                                                  st.integers(0, VOCAB - 1)),
                                        min_size=4, max_size=4)),
    st.tuples(st.just("remove"), st.integers(0, 10**6)),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(events, min_size=1, max_size=8))
def test_each_rows_slots_equal_its_paths_evaluated_alone(script):
    session = batch_backend().batch_session()
    contexts: dict[int, list[int]] = {}
    for kind, arg in script:
        if kind == "add" and len(contexts) + len(arg) <= 4:
            added = session.add_rows(arg) if len(arg) > 1 else [session.add_row(arg[0])]
            for prompt, (row, logits) in zip(arg, added):
                contexts[row] = list(prompt)
                torch.testing.assert_close(logits, sequential_logits(prompt), atol=5e-3,
                                           rtol=1e-3)
        elif kind == "remove" and contexts:
            row = sorted(contexts)[arg % len(contexts)]
            session.remove_row(row)
            del contexts[row]
        elif kind == "step" and contexts:
            rows = sorted(contexts)
            items = [(row, pending, tree.compile(CPU))
                     for row, (tree, _, pending) in zip(rows, arg)]
            outputs = [logits.clone() for logits in session.verify(items)]
            for (row, pending, tree), logits, (_, choice, _) in zip(items, outputs, arg):
                paths = slot_paths(tree)
                slot_tokens = [pending] + tree.node_tokens.tolist()
                for slot, path in enumerate(paths):
                    want = sequential_logits(contexts[row] + [slot_tokens[s] for s in path])
                    torch.testing.assert_close(logits[slot], want, atol=5e-3, rtol=1e-3)
                kept = paths[choice % len(paths)]
                session.commit(row, kept)
                contexts[row] += [slot_tokens[s] for s in kept]
        assert {row: session.past_length(row) for row in session.rows} == {
            row: len(context) for row, context in contexts.items()}
    assert session.cache_length == sum(map(len, contexts.values()))


def test_rows_joining_together_join_all_or_none():
    """``add_rows`` gives each prompt its own row, with the logits and steps of its own
    sequence; if a prefill fails, the rows it added before are removed again, leaving no row,
    cell or sequence behind."""
    backend = LlamaCppBackend(tiny_gguf(), n_threads=1)
    calls = []
    decode = backend.decode

    def failing_on_seven(batch):
        calls.append(batch.n_tokens)
        if batch.n_tokens == 7:
            raise DecodingError("failed")
        return decode(batch)

    backend.decode = failing_on_seven
    session = backend.batch_session()
    rng = np.random.default_rng(3)
    prompts = [rng.integers(3, VOCAB, n).tolist() for n in (3, 2, 11, 4)]
    added = session.add_rows(prompts)
    tree = DraftTree(np.array([5, 6, 7]), np.array([-1, 0, -1])).compile(CPU)
    for prompt, (row, logits) in zip(prompts, added):
        torch.testing.assert_close(logits, sequential_logits(prompt), atol=5e-3, rtol=1e-3)
        assert session.past_length(row) == len(prompt)
    items = [(row, 9, tree) for row, _ in added]
    for prompt, (row, _, _), logits in zip(prompts, items, session.verify(items)):
        for slot, path in enumerate(slot_paths(tree)):
            tokens = [[9, 5, 6, 7][s] for s in path]
            torch.testing.assert_close(logits[slot], sequential_logits(prompt + tokens),
                                       atol=5e-3, rtol=1e-3)
        session.commit(row, [0, 1])
    rows, free, cached = session.rows, len(session._free), session.cache_length
    calls.clear()
    with pytest.raises(DecodingError, match="failed"):
        session.add_rows([[3, 4], [5, 6, 7], [7, 8, 9, 10, 11, 12, 13]])
    assert calls == [2, 3, 7]  # two rows joined, then the third failed: all undone
    assert (session.rows, len(session._free), session.cache_length) == (rows, free, cached)
    assert all(seq_cells(backend, s) == -1 for s in session._free)


def test_commits_and_removals_free_every_cell_and_sequence():
    backend = batch_backend()
    session = backend.batch_session()
    first, _ = session.add_row([5, 6, 7])
    second, _ = session.add_row([8, 9])
    branchy = DraftTree(np.array([10, 11, 12, 13]), np.array([-1, -1, 0, 0])).compile(CPU)
    session.verify([(first, 4, branchy), (second, 4, branchy)])
    session.commit(first, [0, 1, 3])   # slot 3 is '12' (a second-level sibling): not main's path
    session.commit(second, [])         # keep nothing
    assert (session.past_length(first), session.past_length(second)) == (6, 2)
    used = {session._rows[first].main, session._rows[second].main}
    assert len(session._free) == MAX_SEQUENCES - 2
    assert all(seq_cells(backend, s) == -1 for s in range(MAX_SEQUENCES) if s not in used)
    assert seq_cells(backend, session._rows[first].main) == 5
    assert seq_cells(backend, session._rows[second].main) == 1
    session.remove_row(first)
    session.remove_row(second)
    assert session.rows == [] and len(session._free) == MAX_SEQUENCES
    assert all(seq_cells(backend, s) == -1 for s in used)


def test_the_rows_share_the_contexts_cells_and_a_full_one_is_refused():
    backend = LlamaCppBackend(tiny_gguf(), n_threads=1, n_ctx=256)  # llama.cpp's smallest
    session = backend.batch_session()
    row, _ = session.add_row([3 + i % 60 for i in range(250)])
    with pytest.raises(DecodingError, match="256 for all rows"):
        session.add_row(list(range(3, 10)))
    with pytest.raises(DecodingError, match="positions"):
        session.verify([(row, 5, DraftTree(np.arange(3, 9), np.arange(-1, 5)).compile(CPU))])
    assert session.rows == [row] and session.cache_length == 250


def test_batched_greedy_equals_each_request_alone():
    backend = batch_backend()
    prompts = [[5, 9, 12, 5, 9], [7, 7, 8], [20, 21, 22, 23, 20, 21], [3]]
    alone = [generate(backend, IdTokenizer(), input_ids=p, max_new_tokens=12) for p in prompts]
    drafters = [OracleDrafter(len(p), a.token_ids, VOCAB, seed=i) if i % 2 == 0 else None
                for i, (p, a) in enumerate(zip(prompts, alone))]
    results = generate_batch(backend, IdTokenizer(), [BatchRequest(input_ids=p) for p in prompts],
                             drafters=drafters, max_rows=3, max_new_tokens=12)
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]
    assert sum(sum(r.stats.accepted_per_step) > r.stats.steps for r in results) >= 1


def test_the_batch_profile_fits_the_rows_shared_cells(tmp_path):
    """llama.cpp's rows share one context: the batch profile's largest cache plus its widest
    forward must fit it, though each row's share would (504 cached + 16 > 512 cells)."""
    from restdecode.latency import batch_profile_for

    backend = LlamaCppBackend(tiny_gguf(), n_threads=1, n_ctx=512)
    profile = batch_profile_for(backend, cache_dir=tmp_path, progress=False, repeats=1,
                                nodes=(0, 1, 12), cache_lengths=(64, 256, 504), rows=(4,))
    assert profile.cache_lengths == (64, 256) and profile.by_rows[4].seconds.shape == (2, 3)


def test_trees_are_cut_to_the_cells_a_shared_context_has_left():
    """Rows whose prompts and answers fill nearly the whole context still decode exactly, with
    deep oracle trees: each step's trees are cut to the cells left (a full context would fail
    the shared forward, and every row with it)."""
    backend = LlamaCppBackend(tiny_gguf(), n_threads=1, n_ctx=256)  # llama.cpp's smallest
    rng = np.random.default_rng(5)
    prompts = [rng.integers(3, VOCAB, 73).tolist() for _ in range(3)]  # 3 x (73 + 12) = 255
    alone = [generate(reference_backend(), IdTokenizer(), input_ids=p, max_new_tokens=12)
             for p in prompts]
    drafters = [OracleDrafter(len(p), a.token_ids, VOCAB, depth=10, seed=i)
                for i, (p, a) in enumerate(zip(prompts, alone))]
    results = generate_batch(backend, IdTokenizer(), [BatchRequest(input_ids=p) for p in prompts],
                             drafters=drafters, max_rows=3, max_new_tokens=12)
    assert [r.token_ids for r in results] == [a.token_ids for a in alone]
    widths = [sum(r.stats.tree_size_per_step[step] for r in results
                  if step < len(r.stats.tree_size_per_step))
              for step in range(max(len(r.stats.tree_size_per_step) for r in results))]
    # The first step's trees (three deep oracle trees, more nodes than fit) fill exactly the
    # cells left beside the prompts and the three pending tokens.
    assert widths[0] == 256 - 3 * 73 - 3


def test_the_server_admits_batched_llamacpp_requests_as_the_shared_cells_allow():
    """serve --max-batch on llama.cpp: a request starts only when its prompt and max_tokens fit
    beside the running ones (the others wait; none fails mid-answer), and one that could never
    fit is refused with the reason."""
    import asyncio

    from restdecode.engine import Engine
    from restdecode.options import GenerationOptions
    from restdecode.server.scheduler import Job, Scheduler

    backend = LlamaCppBackend(tiny_gguf(), n_threads=1, n_ctx=256)
    engine = Engine(backend, IdTokenizer(), draft=False, progress=False, say=lambda m: None)
    scheduler = Scheduler(engine, speculate=False, max_active=4)
    lane, most_rows = scheduler._lane, []
    real_add = lane.add

    def recording_add(starts):
        failed = real_add(starts)
        most_rows.append(len(lane.rows))
        assert sum(lane.cells.values()) <= 256
        return failed

    lane.add = recording_add
    rng = np.random.default_rng(9)
    prompts = [rng.integers(3, VOCAB, 100).tolist() for _ in range(4)]  # 120 cells each
    options = GenerationOptions(max_new_tokens=20)
    alone = [generate(reference_backend(), IdTokenizer(), input_ids=p, max_new_tokens=20).token_ids
             for p in prompts]

    async def run() -> list:
        loop = asyncio.get_running_loop()
        jobs = [Job(p, options, "t", loop) for p in prompts]
        jobs.append(Job(rng.integers(3, VOCAB, 250).tolist(), options, "t", loop))  # 270 > 256
        for job in jobs:
            scheduler.submit(job)
        outcomes = []
        for job in jobs:
            while (event := await job.events.get())[0] == "piece":
                pass
            outcomes.append(event)
        return outcomes

    scheduler.start()
    try:
        outcomes = asyncio.run(run())
    finally:
        scheduler.stop()
    assert [kind for kind, _ in outcomes] == ["done"] * 4 + ["error"]
    assert [result.token_ids for _, result in outcomes[:4]] == alone
    assert "needs 270 positions" in outcomes[4][1] and "holds 256" in outcomes[4][1]
    assert max(most_rows) == 2  # two of 120 cells fit in 256, never three

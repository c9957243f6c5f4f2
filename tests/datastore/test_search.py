"""Search equals a brute-force scan of the documents (the semantics of restdecode.datastore.search)."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restdecode.datastore import Datastore, build_from_token_documents
from restdecode.errors import DatastoreError

# Small alphabets make matches (and document-end cuts) frequent. The u32 case maps the same
# small alphabet onto ids around and above 65,535, which only a 4-byte store can hold.
SMALL_VOCAB, LARGE_VOCAB = 4, 70_000
LARGE_IDS = (0, 65_534, 65_535, 69_999)


def brute_force(documents, context, *, vocab_size, max_suffix, min_suffix, max_matches, span):
    """Scan every position; order occurrences by the text after them, a document end first."""
    sequence = []
    for document in documents:
        if document:
            sequence += list(document) + [-1]  # -1: document end, sorts before every id
    tail = list(context[-max_suffix:]) if context else []
    for index in range(len(tail) - 1, -1, -1):
        if not 0 <= tail[index] < vocab_size:
            tail = tail[index + 1:]
            break
    for m in range(len(tail), min_suffix - 1, -1):
        pattern = tail[len(tail) - m:]
        occurrences = [p for p in range(len(sequence) - m)
                       if sequence[p:p + m] == pattern and sequence[p + m] != -1]
        if occurrences:
            break
    else:
        return 0, 0, []
    occurrences.sort(key=lambda p: sequence[p:])
    total = len(occurrences)
    examined = min(total, max_matches)
    continuations = Counter()
    for i in range(examined):
        start = occurrences[(i * total) // examined] + m
        end = start
        while end < start + span and sequence[end] != -1:
            end += 1
        continuations[tuple(sequence[start:end])] += 1
    return m, total, sorted(continuations.items())


def result_rows(result):
    rows = []
    for row, length, count in zip(result.continuations.tolist(), result.lengths.tolist(),
                                  result.counts.tolist()):
        assert all(value == -1 for value in row[length:]), "padding after the continuation's end"
        rows.append((tuple(row[:length]), count))
    return rows


def search_case(large: bool):
    ids = st.sampled_from(LARGE_IDS) if large else st.integers(0, SMALL_VOCAB - 1)
    vocab = LARGE_VOCAB if large else SMALL_VOCAB
    context_ids = st.one_of(ids, st.sampled_from([-1, vocab, vocab + 7]))  # invalid ids cut the context
    return st.fixed_dictionaries({
        "documents": st.lists(st.lists(ids, max_size=24), min_size=1, max_size=8),
        "context": st.lists(st.one_of(ids, ids, ids, context_ids), max_size=12),
        "max_suffix": st.integers(1, 8),
        "min_offset": st.integers(0, 3),
        "max_matches": st.integers(1, 12),
        "span": st.integers(1, 6),
        "vocab": st.just(vocab),
    })


def check_against_brute_force(case):
    max_suffix = case["max_suffix"]
    min_suffix = max(1, max_suffix - case["min_offset"])
    options = dict(max_suffix=max_suffix, min_suffix=min_suffix, max_matches=case["max_matches"],
                   span=case["span"])
    with tempfile.TemporaryDirectory() as directory:
        path = build_from_token_documents(case["documents"], Path(directory, "s.rds"), vocab_size=case["vocab"])
        store = Datastore.open(path)
        assert store.header.token_width == (4 if case["vocab"] > 65_535 else 2)
        result = store.search(case["context"], **options)
        expected_length, expected_total, expected_rows = brute_force(
            case["documents"], case["context"], vocab_size=case["vocab"], **options)
        assert result.match_length == expected_length
        assert result.num_occurrences == expected_total
        assert result_rows(result) == expected_rows
        assert result.continuations.shape == (len(expected_rows), case["span"])
        store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_case(large=False))
def test_search_matches_brute_force_u16(case):
    check_against_brute_force(case)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_case(large=True))
def test_search_matches_brute_force_u32(case):
    check_against_brute_force(case)


@pytest.fixture
def repetitive_store(tmp_path):
    """One long document where "1 2" occurs 300 times, followed by 0..9 in turn."""
    document = []
    for i in range(300):
        document += [1, 2, 10 + i % 10]
    return Datastore.open(build_from_token_documents([document, [5, 1, 2]], tmp_path / "r.rds", vocab_size=64))


def test_cap_samples_evenly_so_counts_follow_frequencies(repetitive_store):
    result = repetitive_store.search([7, 1, 2], max_matches=50, span=1)
    assert result.match_length == 2
    assert result.num_occurrences == 300  # the occurrence at the end of document 2 proposes nothing
    assert result.counts.sum() == 50
    assert result.continuations[:, 0].tolist() == list(range(10, 20))
    assert result.counts.tolist() == [5] * 10


def test_context_types_and_no_match(repetitive_store):
    as_list = repetitive_store.search([3, 1, 2])
    as_array = repetitive_store.search(np.array([3, 1, 2], dtype=np.int32))
    assert as_list.match_length == as_array.match_length == 2
    assert np.array_equal(as_list.continuations, as_array.continuations)
    empty = repetitive_store.search([40, 41, 42])
    assert (empty.match_length, empty.num_occurrences, len(empty)) == (0, 0, 0)
    assert empty.continuations.shape == (0, 10)
    assert len(repetitive_store.search([])) == 0


def test_bad_arguments_are_rejected(repetitive_store):
    with pytest.raises(ValueError):
        repetitive_store.search([1, 2], min_suffix=3, max_suffix=2)
    with pytest.raises(ValueError):
        repetitive_store.search([1, 2], span=0)


def test_corrupt_suffix_array_entry_is_an_error_not_a_crash(tmp_path):
    path = build_from_token_documents([[1, 2, 3, 1, 2, 4]], tmp_path / "c.rds", vocab_size=8)
    store = Datastore.open(path)
    offset = store._mapped.sections["suffix_array"]["offset"]
    store.close()
    data = bytearray(path.read_bytes())
    data[offset:offset + 4 * 7] = np.full(7, 10**6, dtype="<i4").tobytes()
    path.write_bytes(bytes(data))
    with pytest.raises(DatastoreError, match="corrupt"):
        Datastore.open(path).search([1, 2])

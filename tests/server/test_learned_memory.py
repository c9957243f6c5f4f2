"""The server's learned memory: log durability and recovery, compaction, tenants, drafts.

(Named test_learned_memory.py: tests/ folders have no __init__.py, so a second test_memory.py
would collide with tests/drafting/test_memory.py in a whole-suite run.)
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from restdecode.drafting import CombinedDrafter, ContextDrafter, RetrievalDrafter, default_drafter
from restdecode.drafting.defaults import CONTEXT_WEIGHT
from restdecode.server import memory as memory_module
from restdecode.server.memory import LOG_NAME, LearnedMemory, MemoryLockedError

BIG_VOCAB = 262_144  # Gemma 3: ids need 32 bits
KEY = "tokenizer-fingerprint"
SPAN = 32


def open_memory(directory, messages: list[str] | None = None, **options) -> LearnedMemory:
    options.setdefault("vocab_size", BIG_VOCAB)
    options.setdefault("key", KEY)
    say = messages.append if messages is not None else _no_warning
    return LearnedMemory(directory, say=say, **options)


def _no_warning(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def settle(memory: LearnedMemory) -> None:
    """Wait for the compactions (failing, not hanging, if they never end)."""
    memory.wait_idle(30)
    assert memory.stats()["compactions_pending"] == 0, "compactions never settle"


def as_lists(records) -> list[list[int]]:
    return [np.asarray(record).tolist() for record in records]


def drafted(memory: LearnedMemory, tenant: str, context: list[int]) -> tuple[int, Counter]:
    """The memory's match length and continuations (rows summed with their weights)."""
    drafter = memory.drafter(tenant)
    if drafter is None:
        return 0, Counter()
    found = drafter.continuations(context)
    counts: Counter = Counter()
    for row, length, weight in zip(found.continuations, found.lengths, found.weights):
        counts[tuple(row[:length].tolist())] += weight
    return found.match_length, counts


def naive(records: list[list[int]], context: list[int], max_suffix: int = 16,
          min_suffix: int = 2) -> tuple[int, Counter]:
    """Brute force: the longest suffix of ``context`` occurring inside one record with a token
    after it, and what follows each occurrence in its record (up to SPAN tokens)."""
    for m in range(min(max_suffix, len(context)), min_suffix - 1, -1):
        suffix = context[-m:]
        counts = Counter(tuple(record[i + m:i + m + SPAN]) for record in records
                         for i in range(len(record) - m) if record[i:i + m] == suffix)
        if counts:
            return m, counts
    return 0, Counter()


def log_offsets(directory: Path, memory: LearnedMemory, records) -> list[int]:
    """Record each of ``records`` (tenant, ids) and return the log size before each and at the end."""
    sizes = [(directory / LOG_NAME).stat().st_size]
    for tenant, ids in records:
        memory.record(tenant, ids)
        sizes.append((directory / LOG_NAME).stat().st_size)
    return sizes


# ----------------------------------------------------------------------------- the log

record_lists = st.lists(st.tuples(st.sampled_from(["", "a", "key-b"]),
                                  st.lists(st.integers(0, 2**32 - 2), min_size=0, max_size=12)),
                        max_size=10)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=record_lists, compact=st.sampled_from([4, 10**9]))
def test_records_survive_a_reopen_per_tenant(records, compact):
    with tempfile.TemporaryDirectory() as directory:
        with open_memory(directory, vocab_size=2**32 - 1, compact_tokens=compact) as memory:
            for tenant, ids in records:
                memory.record(tenant, ids)
            settle(memory)
        with open_memory(directory, vocab_size=2**32 - 1, compact_tokens=compact) as memory:
            for tenant in ("", "a", "key-b", "nobody"):
                expected = [ids for name, ids in records if name == tenant and ids]
                assert as_lists(memory.records(tenant)) == expected
            assert memory.stats()["records"] == sum(1 for _, ids in records if ids)


def test_ids_outside_the_vocabulary_are_refused_and_nothing_is_written(tmp_path):
    with open_memory(tmp_path, vocab_size=1000) as memory:
        size = (tmp_path / LOG_NAME).stat().st_size
        with pytest.raises(ValueError):
            memory.record("", [1, 1000])
        with pytest.raises(ValueError):
            memory.record("", [-1, 2])
        assert (tmp_path / LOG_NAME).stat().st_size == size and memory.drafter("") is None


def test_a_second_memory_on_the_same_directory_is_refused(tmp_path):
    with open_memory(tmp_path):
        with pytest.raises(MemoryLockedError):
            open_memory(tmp_path)
    open_memory(tmp_path).close()  # released by close


def test_a_torn_last_record_is_dropped_at_every_cut(tmp_path):
    source = tmp_path / "source"
    earlier = [("a", [70_000, 1, 2]), ("b", [3, 200_000]), ("a", [5])]
    with open_memory(source) as memory:
        sizes = log_offsets(source, memory, [*earlier, ("a", [9, 262_143, 7, 7])])
    log = (source / LOG_NAME).read_bytes()
    start, end = sizes[-2], sizes[-1]
    for cut in range(start + 1, end):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / LOG_NAME).write_bytes(log[:cut])
        messages: list[str] = []
        with open_memory(directory, messages) as memory:
            assert as_lists(memory.records("a")) == [[70_000, 1, 2], [5]]
            assert as_lists(memory.records("b")) == [[3, 200_000]]
            assert len(messages) == 1 and "torn" in messages[0]
            assert (directory / LOG_NAME).stat().st_size == start
            memory.record("b", [11, 12])
        with open_memory(directory) as memory:  # no warning: the log ends cleanly again
            assert as_lists(memory.records("b")) == [[3, 200_000], [11, 12]]


def test_a_checksum_mismatch_in_the_last_record_counts_as_torn(tmp_path):
    with open_memory(tmp_path) as memory:
        sizes = log_offsets(tmp_path, memory, [("", [1, 2, 3]), ("", [4, 5, 6])])
    log = bytearray((tmp_path / LOG_NAME).read_bytes())
    log[-1] ^= 0x40  # the last token of the last record
    (tmp_path / LOG_NAME).write_bytes(bytes(log))
    messages: list[str] = []
    with open_memory(tmp_path, messages) as memory:
        assert as_lists(memory.records("")) == [[1, 2, 3]]
    assert "torn" in messages[0] and (tmp_path / LOG_NAME).stat().st_size == sizes[1]
    assert not list(tmp_path.glob("*.damaged"))


@pytest.mark.parametrize("where", ["payload", "header"])
def test_damage_in_the_middle_keeps_the_records_before_and_moves_the_rest_aside(tmp_path, where):
    records = [("", [1, 2, 3]), ("x", [4, 5]), ("", [6, 7, 8]), ("", [9])]
    with open_memory(tmp_path) as memory:
        sizes = log_offsets(tmp_path, memory, records)
    log = bytearray((tmp_path / LOG_NAME).read_bytes())
    log[sizes[2] + (30 if where == "payload" else 2)] ^= 0x01  # inside record 2
    (tmp_path / LOG_NAME).write_bytes(bytes(log))
    messages: list[str] = []
    with open_memory(tmp_path, messages) as memory:
        assert as_lists(memory.records("")) == [[1, 2, 3]]
        assert as_lists(memory.records("x")) == [[4, 5]]
        memory.record("", [10, 11])
    damaged = list(tmp_path.glob(f"{LOG_NAME}.*.damaged"))
    assert len(messages) == 1 and damaged[0].name in messages[0]
    assert damaged[0].read_bytes() == bytes(log[sizes[2]:])
    with open_memory(tmp_path) as memory:
        assert as_lists(memory.records("")) == [[1, 2, 3], [10, 11]]


@pytest.mark.parametrize("change", [{"key": "another tokenizer"}, {"vocab_size": 50_000}])
def test_a_log_for_another_tokenizer_is_moved_aside(tmp_path, change):
    with open_memory(tmp_path, compact_tokens=2) as memory:
        memory.record("", [1, 2, 3, 4])
        settle(memory)
    assert list(tmp_path.glob("store-*.rds"))
    messages: list[str] = []
    with open_memory(tmp_path, messages, **change) as memory:
        assert memory.records("") == [] and memory.drafter("") is None
        assert memory.stats()["records"] == 0
        memory.record("", [5, 6])
    assert len(messages) == 1 and len(list(tmp_path.glob(f"{LOG_NAME}.*.foreign"))) == 1
    assert not list(tmp_path.glob("store-*.rds"))  # stores of the old log are gone
    with open_memory(tmp_path, **change) as memory:
        assert as_lists(memory.records("")) == [[5, 6]]


def test_a_damaged_file_header_starts_a_new_log(tmp_path):
    (tmp_path / LOG_NAME).write_bytes(b"RDMEMLOG garbage")
    messages: list[str] = []
    with open_memory(tmp_path, messages) as memory:
        assert memory.stats()["records"] == 0
    assert len(messages) == 1 and len(list(tmp_path.glob(f"{LOG_NAME}.*.damaged"))) == 1


_WRITER = """
import sys
from restdecode.server.memory import LearnedMemory
memory = LearnedMemory(sys.argv[1], vocab_size=300_000, key="k", compact_tokens=10**9)
i = 0
while True:
    memory.record("t", [(i * 7919 + j) % 300_000 for j in range(1 + (i * 37) % 5000)])
    print(i, flush=True)
    i += 1
"""


def expected_record(i: int) -> list[int]:
    return [(i * 7919 + j) % 300_000 for j in range(1 + (i * 37) % 5000)]


def test_kill_9_while_appending_loses_at_most_the_record_being_written(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(40):
            assert writer.stdout.readline(), "the writer died"
    finally:
        writer.send_signal(signal.SIGKILL)
        printed = writer.communicate()[0].split()
    # each line printed: a record whose record() had returned (fsync'ed)
    last_reported = int(printed[-1]) if printed else 39
    messages: list[str] = []
    with open_memory(tmp_path, messages, vocab_size=300_000, key="k") as memory:
        records = as_lists(memory.records("t"))
    assert last_reported + 1 <= len(records) <= last_reported + 2
    assert records == [expected_record(i) for i in range(len(records))]
    assert all("torn" in message for message in messages)


# ----------------------------------------------------------------------------- drafting

small_records = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=30), min_size=1,
                         max_size=12)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=small_records, later=small_records, contexts=st.lists(
    st.lists(st.integers(0, 5), min_size=1, max_size=20), min_size=1, max_size=5))
def test_drafts_from_store_and_tail_equal_a_naive_scan_and_the_tail_alone(first, later, contexts):
    with tempfile.TemporaryDirectory() as compacted_dir, tempfile.TemporaryDirectory() as tail_dir:
        with open_memory(compacted_dir, compact_tokens=0) as compacted, \
                open_memory(tail_dir, compact_tokens=10**9) as tail_only:
            for ids in first:
                compacted.record("", ids)
                tail_only.record("", ids)
            settle(compacted)
            compacted.compact_tokens = 10**9  # the later records stay in the tail
            for ids in later:
                compacted.record("", ids)
                tail_only.record("", ids)
            stats = compacted.stats()
            assert stats["store_tokens"] >= sum(map(len, first)) and stats["compactions"] >= 1
            assert stats["tail_tokens"] <= sum(map(len, later))
            assert tail_only.stats()["store_tokens"] == 0
            records = first + later
            for context in contexts + [record[:len(record) // 2 + 2] for record in records]:
                expected = naive(records, context)
                assert drafted(compacted, "", context) == expected
                assert drafted(tail_only, "", context) == expected


def test_continuations_never_cross_from_one_record_into_the_next(tmp_path):
    for compact in (0, 10**9):
        with open_memory(tmp_path / str(compact), compact_tokens=compact) as memory:
            memory.record("", [1, 2, 3])
            memory.record("", [4, 5, 6])
            memory.record("", [7, 2, 3, 8])
            settle(memory)
            assert drafted(memory, "", [9, 2, 3]) == (2, Counter({(8,): 1}))
            assert drafted(memory, "", [1, 2, 3]) == (2, Counter({(8,): 1}))
            assert drafted(memory, "", [5, 6]) == (0, Counter())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a_records=st.lists(st.lists(st.sampled_from([0, 1, 2, 1000, 1001]), min_size=1,
                                   max_size=20), min_size=1, max_size=8),
       b_records=st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=20), max_size=8),
       compact=st.sampled_from([0, 25, 10**9]))
def test_one_tenants_records_never_draft_for_another(a_records, b_records, compact):
    with tempfile.TemporaryDirectory() as directory:
        with open_memory(directory, compact_tokens=compact) as memory:
            for a, b in itertools.zip_longest(a_records, b_records, fillvalue=[]):
                memory.record("tenant A", a)
                memory.record("tenant B", b)
            settle(memory)
            for record in a_records:
                for cut in range(1, len(record) + 1):
                    match_length, counts = drafted(memory, "tenant B", record[:cut])
                    assert (match_length, counts) == naive(b_records, record[:cut])
                    assert not {1000, 1001} & {t for row in counts for t in row}
            assert memory.drafter("tenant C") is None


def test_a_drafter_is_a_snapshot(tmp_path):
    with open_memory(tmp_path, compact_tokens=10**9) as memory:
        memory.record("", [1, 2, 3])
        before = memory.drafter("")
        memory.record("", [1, 2, 4])
        assert drafted(memory, "", [1, 2])[1] == Counter({(3,): 1, (4,): 1})
        assert before.continuations([1, 2]).continuations.tolist() == [[3] + [-1] * (SPAN - 1)]


# ----------------------------------------------------------------------------- compaction


def test_compaction_runs_in_the_background_and_requests_never_wait(tmp_path, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_build = memory_module.build_from_token_documents

    def slow_build(*args, **kwargs):
        started.set()
        assert release.wait(20)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(memory_module, "build_from_token_documents", slow_build)
    rng = np.random.default_rng(1)
    first = [rng.integers(0, BIG_VOCAB, 400).tolist() for _ in range(3)]
    with open_memory(tmp_path, compact_tokens=1000) as memory:
        for ids in first:
            memory.record("", ids)
        assert started.wait(10)  # 1200 tokens > 1000: compaction started, and now stalls
        during = rng.integers(0, BIG_VOCAB, 300).tolist()
        began = time.perf_counter()
        memory.record("", during)
        memory.drafter("")
        assert time.perf_counter() - began < 0.5
        assert drafted(memory, "", first[1][:20]) == naive(first, first[1][:20])
        assert memory.stats()["compactions_pending"] == 1 and not list(tmp_path.glob("*.rds"))
        release.set()
        settle(memory)
        drafter = memory.drafter("")  # searches the store about to be replaced
        stores = list(tmp_path.glob("store-*.rds"))
        assert len(stores) == 1 and memory.stats()["compactions"] == 1
        assert memory.stats()["tail_tokens"] == 300  # recorded during the build: still the tail
        assert drafted(memory, "", during[:20]) == naive([during], during[:20])
        # a second compaction deletes the first store: the older drafter still searches it
        for _ in range(3):
            memory.record("", rng.integers(0, BIG_VOCAB, 400).tolist())
        settle(memory)
        assert not stores[0].exists() and len(list(tmp_path.glob("store-*.rds"))) == 1
        assert drafter.continuations(first[0][:20]).match_length == 16


def test_a_failed_compaction_warns_and_keeps_the_records(tmp_path, monkeypatch):
    def failing_build(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(memory_module, "build_from_token_documents", failing_build)
    messages: list[str] = []
    with open_memory(tmp_path, messages, compact_tokens=3) as memory:
        memory.record("", [1, 2, 3, 4])
        settle(memory)
        assert "disk full" in messages[0] and as_lists(memory.records("")) == [[1, 2, 3, 4]]
        assert drafted(memory, "", [1, 2]) == (2, Counter({(3, 4): 1}))


def test_a_restart_reuses_the_store_and_the_tail_holds_the_later_records(tmp_path, monkeypatch):
    with open_memory(tmp_path, compact_tokens=10) as memory:
        for i in range(4):
            memory.record("", [i, 100, 101, 102, 103, 104])
            settle(memory)  # a compaction after every second record
        memory.compact_tokens = 10**9
        memory.record("", [7, 8, 9])
        memory.record("other", [7, 8, 6])
        before = memory.stats()
    stores = sorted(tmp_path.glob("store-*.rds"))

    def no_build(*args, **kwargs):
        raise AssertionError("the store was rebuilt")

    monkeypatch.setattr(memory_module, "build_from_token_documents", no_build)
    with open_memory(tmp_path, compact_tokens=10) as memory:
        settle(memory)
        after = memory.stats()
        assert after["compactions"] == 0 and sorted(tmp_path.glob("store-*.rds")) == stores
        assert after["store_tokens"] == before["store_tokens"] == 24
        assert after["tail_tokens"] == before["tail_tokens"] == 6
        assert drafted(memory, "", [7, 8]) == (2, Counter({(9,): 1}))
        assert drafted(memory, "", [100, 101]) == (2, Counter({(102, 103, 104): 4}))


@pytest.mark.parametrize("damage", ["store missing", "manifest garbage"])
def test_a_lost_store_or_manifest_means_a_rebuild_from_the_log(tmp_path, damage):
    records = [[i, 50, 51, 52] for i in range(5)]
    with open_memory(tmp_path, compact_tokens=10) as memory:
        for ids in records:
            memory.record("", ids)
        settle(memory)
    if damage == "store missing":
        next(tmp_path.glob("store-*.rds")).unlink()
    else:
        (tmp_path / "manifest.json").write_text("{not json")
    messages: list[str] = []
    with open_memory(tmp_path, messages, compact_tokens=10) as memory:
        assert as_lists(memory.records("")) == records
        settle(memory)
        assert memory.stats()["compactions"] == 1 and memory.stats()["tail_tokens"] == 0
        assert drafted(memory, "", [50, 51]) == (2, Counter({(52,): 5}))
    assert len(messages) == 1 and len(list(tmp_path.glob("store-*.rds"))) == 1


# ----------------------------------------------------------------------------- default drafter


def test_a_learned_source_joins_the_default_drafter_with_the_context_weight(tmp_path):
    with open_memory(tmp_path) as memory:
        memory.record("", [1, 2, 3, 4])
        learned = memory.drafter("")
    plain = default_drafter(None, budget=8)
    assert isinstance(plain, ContextDrafter)
    drafter = default_drafter(None, budget=8, learned=learned)
    assert isinstance(drafter, CombinedDrafter) and drafter.weights == [CONTEXT_WEIGHT] * 2
    assert drafter.drafters[1] is learned and learned.budget == 8
    assert set(drafter.propose([9, 1, 2]).tokens.tolist()) == {3, 4}

    class Store:  # any SuffixSearcher
        def search(self, *args, **kwargs):
            return memory_module.ArrayStore([np.array([5, 6])], 10).search(*args, **kwargs)

    drafter = default_drafter(Store(), budget=8, learned=learned)
    assert [type(source) for source in drafter.drafters][:2] == [RetrievalDrafter, ContextDrafter]
    assert drafter.weights == [1.0, CONTEXT_WEIGHT, CONTEXT_WEIGHT]

"""The learned memory of ``restdecode serve``: what the server already answered, as drafts.

SuffixDecoding's idea (Oliaro et al. 2024): a served model repeats itself across requests, so
its finished requests (prompt + answer token ids) are a datastore made for it. Each record is
appended to a checksummed log (one fsync per record); a tenant's records are searchable at once
through a small in-memory suffix array over its recent records (the *tail*), and once the tail
passes ``compact_tokens`` a background thread compacts it with everything earlier of that
tenant into a datastore file, swapped in atomically. ``docs/server-memory.md`` describes the
files, what a crash can lose and how a damaged log is recovered.

Layout of the directory::

    memory.log              file header (magic, version, JSON: key, vocab_size, log_id), then records
    manifest.json           which log records each tenant's store covers (written atomically)
    store-<tenant>-<end>.rds  a tenant's compacted store (a datastore file, one document per record)
    lock                    flock'ed by the open memory: one process per directory

A record is ``<u32 payload length><u32 crc32(payload)><u32 crc32(the 8 bytes before)>`` then the
payload: the tenant's 16-byte digest and the token ids as little-endian u32.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from restdecode.datastore import Datastore
from restdecode.datastore.build import assemble_tokens, build_from_token_documents, build_suffix_array
from restdecode.datastore.search import (MAX_MATCHES, MAX_SUFFIX, MIN_SUFFIX, SPAN, SearchResult,
                                         search_arrays)
from restdecode.drafting.base import ContinuationDrafter, WeightedContinuations, concatenate
from restdecode.drafting.defaults import CONTEXT_SPAN, DEFAULT_BUDGET
from restdecode.drafting.retrieval import RetrievalDrafter, SuffixSearcher
from restdecode.errors import RestdecodeError

LOG_NAME = "memory.log"
MANIFEST_NAME = "manifest.json"
LOCK_NAME = "lock"
LOG_MAGIC = b"RDMEMLOG"
LOG_VERSION = 1
MANIFEST_VERSION = 1
DEFAULT_COMPACT_TOKENS = 20_000
DIGEST_BYTES = 16
MAX_VOCAB_SIZE = 2**32 - 1  # ids are stored as u32 here, and as id + 1 in a datastore

_FILE_HEADER = struct.Struct("<8sIII")  # magic, version, JSON length, crc32 of the JSON
_RECORD_HEADER = struct.Struct("<III")  # payload length, crc32 of the payload, crc32 of those 8 bytes
_TOKEN = np.dtype("<u4")


class MemoryLockedError(RestdecodeError):
    """Another open learned memory (this process or another) holds the directory."""


def tenant_digest(tenant: str) -> bytes:
    """The 16-byte name of ``tenant`` in the log and in file names: the tenant (e.g. derived
    from an API key) itself is never written anywhere."""
    return hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).digest()[:DIGEST_BYTES]


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- drafting


class ArrayStore:
    """Token documents in an in-memory suffix array, searched exactly as a datastore file is."""

    def __init__(self, documents: Sequence[np.ndarray], vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.tokens, _ = assemble_tokens(documents, vocab_size)
        self.suffix_array = build_suffix_array(self.tokens)

    def search(self, context: Sequence[int] | np.ndarray, max_suffix: int = MAX_SUFFIX,
               min_suffix: int = MIN_SUFFIX, max_matches: int = MAX_MATCHES,
               span: int = SPAN) -> SearchResult:
        """As :meth:`restdecode.datastore.Datastore.search`."""
        return search_arrays(self.tokens, self.suffix_array, self.vocab_size, context,
                             max_suffix=max_suffix, min_suffix=min_suffix,
                             max_matches=max_matches, span=span, source="learned memory tail")


class LearnedDrafter(ContinuationDrafter):
    """Continuations of the context's longest suffix found in several searchable sources (a
    tenant's compacted store and its tail): the sources that matched the longest suffix give
    their continuations with their raw counts, as one store holding all their records would."""

    def __init__(self, sources: Sequence[SuffixSearcher], *, budget: int = DEFAULT_BUDGET,
                 span: int = CONTEXT_SPAN) -> None:
        super().__init__(budget=budget)
        self.span = span
        self._drafters = [RetrievalDrafter(source, span=span) for source in sources]

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Every source's continuations of the longest suffix any source matched."""
        found = [drafter.continuations(token_ids) for drafter in self._drafters]
        longest = max((paths.match_length for paths in found), default=0)
        if longest == 0:
            return WeightedContinuations.empty(self.span)
        return concatenate([paths for paths in found if paths.match_length == longest])


# ----------------------------------------------------------------------------- the log


@dataclass(frozen=True)
class _Entry:
    """Where one record lies in the log, whose it is and how many tokens it holds."""

    offset: int
    end: int
    tenant: bytes
    num_tokens: int


@dataclass(frozen=True)
class _Damage:
    """The first bad byte of the log; ``torn``: a record cut short by a crash at the very end
    (truncated away), else damage with data after it (moved aside)."""

    offset: int
    torn: bool
    reason: str


def _encode_record(tenant: bytes, tokens: np.ndarray) -> bytes:
    payload = tenant + tokens.astype(_TOKEN).tobytes()
    lengths = struct.pack("<II", len(payload), zlib.crc32(payload))
    return lengths + struct.pack("<I", zlib.crc32(lengths)) + payload


def _scan_records(file: BinaryIO, start: int, size: int,
                  vocab_size: int) -> Iterator[_Entry | _Damage]:
    """The records from ``start`` on, then a :class:`_Damage` if the log does not end cleanly."""
    offset = start
    while offset < size:
        file.seek(offset)
        head = file.read(_RECORD_HEADER.size)
        if len(head) < _RECORD_HEADER.size:
            yield _Damage(offset, True, "a partial record header")
            return
        length, payload_crc, head_crc = _RECORD_HEADER.unpack(head)
        if zlib.crc32(head[:8]) != head_crc:
            yield _Damage(offset, False, "a record header fails its checksum")
            return
        end = offset + _RECORD_HEADER.size + length
        if end > size:
            yield _Damage(offset, True, "a partial record")
            return
        payload = file.read(length)
        problem = _payload_problem(payload, payload_crc, vocab_size)
        if problem:
            yield _Damage(offset, end == size, problem)  # damage in the last record: a torn write
            return
        yield _Entry(offset, end, payload[:DIGEST_BYTES], (length - DIGEST_BYTES) // 4)
        offset = end


def _payload_problem(payload: bytes, crc: int, vocab_size: int) -> str:
    if zlib.crc32(payload) != crc:
        return "a record fails its checksum"
    if len(payload) <= DIGEST_BYTES or (len(payload) - DIGEST_BYTES) % 4:
        return f"a record has an impossible length ({len(payload)} bytes)"
    if int(np.frombuffer(payload, _TOKEN, offset=DIGEST_BYTES).max()) >= vocab_size:
        return f"a record holds a token id outside the vocabulary of {vocab_size:,}"
    return ""


def _read_tokens(file: BinaryIO, entry: _Entry) -> np.ndarray:
    file.seek(entry.offset + _RECORD_HEADER.size + DIGEST_BYTES)
    return np.frombuffer(file.read(4 * entry.num_tokens), _TOKEN).copy()


def _fsync_path(path: Path) -> None:
    """Make ``path`` durable: a file's contents, or a directory's renames and new files."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path``, all or nothing, durable once this returns."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_path(path.parent)


# ----------------------------------------------------------------------------- tenants


@dataclass(frozen=True)
class _TailRecord:
    offset: int
    end: int
    tokens: np.ndarray


@dataclass
class _Tenant:
    """One tenant's memory: a compacted store covering its records before ``covered_end`` (a
    log offset), and the later records (the tail), with a cached suffix array over them."""

    store: Datastore | None = None
    covered_end: int = 0
    store_records: int = 0
    store_tokens: int = 0
    tail: list[_TailRecord] = field(default_factory=list)
    tail_tokens: int = 0
    tail_index: ArrayStore | None = None
    compacting: bool = False
    compact_after: int = 0  # tail tokens past which a compaction starts (raised after a failure)

    def set_tail(self, tail: list[_TailRecord]) -> None:
        self.tail = tail
        self.tail_tokens = sum(record.tokens.size for record in tail)
        self.tail_index = None


# ----------------------------------------------------------------------------- the memory


class LearnedMemory:
    """Finished requests' token ids, per tenant, kept in ``directory`` and drafted from.

    Args:
        directory: created if missing (mode 0700); one open memory per directory at a time.
        vocab_size: token ids must lie in ``[0, vocab_size)`` (up to 2**32 - 1).
        key: what the token ids mean (e.g. the tokenizer's fingerprint); a log written under
            another key or vocabulary size is moved aside and a new one started.
        compact_tokens: a tenant's tail is compacted into its store once it holds more tokens.
        say: where warnings go (a line each).

    Opening replays the log; a torn last record is cut off, a damaged part moved aside to a
    ``*.damaged`` file, always with a warning and never an exception. ``record`` and
    ``drafter`` may be called from any thread; compactions run in one background thread.
    """

    def __init__(self, directory: str | os.PathLike, *, vocab_size: int, key: str,
                 compact_tokens: int = DEFAULT_COMPACT_TOKENS,
                 say: Callable[[str], None] = _print_to_stderr) -> None:
        if not 1 <= vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be in 1..{MAX_VOCAB_SIZE}, got {vocab_size}")
        if compact_tokens < 0:
            raise ValueError(f"compact_tokens must be >= 0, got {compact_tokens}")
        self.directory = Path(directory)
        self.vocab_size = int(vocab_size)
        self.key = key
        self.compact_tokens = int(compact_tokens)
        self._say = say
        # the tenants' state; re-entrant because a compaction's done-callback may run in the
        # thread that queued it
        self._lock = threading.RLock()
        self._log_lock = threading.Lock()  # appends to the log (taken before _lock)
        self._manifest_lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._tenants: dict[bytes, _Tenant] = {}
        self._pending = 0
        self._compactions = 0
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = self._take_lock()
        self._log_path = self.directory / LOG_NAME
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learned-memory")
        try:
            self._open()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ---- public

    def record(self, tenant: str, token_ids: Sequence[int]) -> None:
        """Append one finished request's tokens (fsync'ed), draftable for ``tenant`` from its
        next :meth:`drafter` on; starts a background compaction when the tail grows past
        ``compact_tokens``. An empty record is ignored; an id outside the vocabulary raises
        ``ValueError`` (nothing written). A failed write (e.g. a full disk) is undone and
        warned about, never raised: the memory is an optimisation of the server, not a duty."""
        tokens = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if tokens.size == 0:
            return
        if tokens.min() < 0 or tokens.max() >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got {tokens.min()}.."
                             f"{tokens.max()}")
        digest = tenant_digest(tenant)
        with self._log_lock:
            if self._closed:
                raise RuntimeError("the learned memory is closed")
            offset = self._end
            if not self._append(_encode_record(digest, tokens)):
                return
            with self._lock:
                state = self._tenants.setdefault(digest, _Tenant(covered_end=self._data_start))
                state.tail.append(_TailRecord(offset, self._end, tokens.astype(_TOKEN)))
                state.tail_tokens += tokens.size
                state.tail_index = None
                self._maybe_compact(digest, state)

    def drafter(self, tenant: str) -> LearnedDrafter | None:
        """A drafting source over ``tenant``'s memory as it is now (store + tail; later records
        and compactions do not change it), or None when the tenant has nothing recorded.
        Never waits for a compaction; costs a suffix array of the tail after a new record."""
        with self._lock:
            state = self._tenants.get(tenant_digest(tenant))
            if state is None:
                return None
            if state.tail and state.tail_index is None:
                state.tail_index = ArrayStore([r.tokens for r in state.tail], self.vocab_size)
            sources = [source for source in (state.store, state.tail_index) if source is not None]
        return LearnedDrafter(sources) if sources else None

    def records(self, tenant: str) -> list[np.ndarray]:
        """``tenant``'s records, oldest first (int64 ids; for inspection and tests)."""
        with self._lock:
            state = self._tenants.get(tenant_digest(tenant))
            if state is None:
                return []
            store, tail = state.store, list(state.tail)
        stored = [store.document(i) for i in range(store.num_documents)] if store else []
        return stored + [record.tokens.astype(np.int64) for record in tail]

    def stats(self) -> dict[str, Any]:
        """Counts for logs and metrics: records, tokens, tenants, compactions done since
        opening, compactions running or queued, tail tokens, bytes on disk."""
        with self._lock:
            states = list(self._tenants.values())
            stats = {
                "records": sum(s.store_records + len(s.tail) for s in states),
                "tokens": sum(s.store_tokens + s.tail_tokens for s in states),
                "tenants": len(states),
                "compactions": self._compactions,
                "compactions_pending": self._pending,
                "tail_tokens": sum(s.tail_tokens for s in states),
                "store_tokens": sum(s.store_tokens for s in states),
            }
        stats["bytes_on_disk"] = self._bytes_on_disk()
        return stats

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no compaction runs or is queued (or ``timeout`` seconds pass)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Stop: queued compactions are dropped, a running one finishes first. Stores stay
        mapped until the drafters using them are gone."""
        with self._log_lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        os.close(self._fd)
        os.close(self._lock_fd)

    def __enter__(self) -> "LearnedMemory":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- opening

    def _take_lock(self) -> int:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MemoryLockedError(f"learned memory {self.directory} is in use by another "
                                    "server (or another memory in this process)") from None
        return fd

    def _open(self) -> None:
        """Open or create the log, replay it, reuse the stores the manifest vouches for."""
        self._log_id, self._data_start = self._open_log()
        manifest = self._read_manifest()
        with open(self._log_path, "rb") as file:
            entries = self._scan_and_repair(file)
            self._end = entries[-1].end if entries else self._data_start
            covered = self._valid_stores(manifest, entries)
            self._load_tenants(file, entries, covered)
        self._fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND)
        self._remove_stray_files()
        self._write_manifest()
        with self._lock:
            for digest, state in self._tenants.items():
                self._maybe_compact(digest, state)

    def _open_log(self) -> tuple[str, int]:
        """The log's id and where its records start; a log of another key or vocabulary, or
        with a damaged file header, is moved aside and a new one created."""
        header = self._read_log_header()
        if isinstance(header, dict):
            if header.get("key") == self.key and header.get("vocab_size") == self.vocab_size:
                return str(header["log_id"]), int(header["data_start"])
            moved = self._move_aside(self._log_path, "foreign")
            self._warn(f"{self._log_path} was written for key {header.get('key')!r} and "
                       f"{header.get('vocab_size')} tokens, not {self.key!r} and {self.vocab_size}; "
                       f"moved to {moved.name}, starting an empty memory")
        elif header:
            moved = self._move_aside(self._log_path, "damaged")
            self._warn(f"{self._log_path}: {header}; moved to {moved.name}, starting an empty memory")
        log_id = secrets.token_hex(8)
        meta = json.dumps({"key": self.key, "vocab_size": self.vocab_size, "log_id": log_id,
                           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                           }).encode()
        _write_atomically(self._log_path, _FILE_HEADER.pack(LOG_MAGIC, LOG_VERSION, len(meta),
                                                            zlib.crc32(meta)) + meta)
        return log_id, _FILE_HEADER.size + len(meta)

    def _read_log_header(self) -> dict | str:
        """The log's header fields (+ ``data_start``); "" when there is no log; else what is
        wrong with it."""
        try:
            with open(self._log_path, "rb") as file:
                prelude = file.read(_FILE_HEADER.size)
                if len(prelude) < _FILE_HEADER.size:
                    return "the file header is incomplete"
                magic, version, length, crc = _FILE_HEADER.unpack(prelude)
                meta = file.read(length)
        except FileNotFoundError:
            return ""
        if magic != LOG_MAGIC or version != LOG_VERSION:
            return f"not a learned memory log of version {LOG_VERSION}"
        if len(meta) < length or zlib.crc32(meta) != crc:
            return "the file header fails its checksum"
        try:
            fields = json.loads(meta)
            return {**fields, "log_id": str(fields["log_id"]),
                    "data_start": _FILE_HEADER.size + length}
        except (ValueError, KeyError, TypeError):
            return "the file header is not the expected JSON"

    def _scan_and_repair(self, file: BinaryIO) -> list[_Entry]:
        """Every good record; a torn end is truncated, damage with data after it moved aside."""
        size = os.fstat(file.fileno()).st_size
        entries: list[_Entry] = []
        for item in _scan_records(file, self._data_start, size, self.vocab_size):
            if isinstance(item, _Entry):
                entries.append(item)
                continue
            lost = size - item.offset
            if item.torn:
                self._warn(f"{self._log_path}: the last record is torn ({item.reason}, {lost} "
                           f"bytes at offset {item.offset}), probably by a crash while it was "
                           f"written; dropped it, {len(entries)} records kept")
            else:
                moved = self._save_damaged(file, item.offset)
                self._warn(f"{self._log_path}: {item.reason} at offset {item.offset}; kept the "
                           f"{len(entries)} records before it, moved the remaining {lost} bytes "
                           f"to {moved.name}")
            os.truncate(self._log_path, item.offset)
            _fsync_path(self._log_path)
        return entries

    def _save_damaged(self, file: BinaryIO, offset: int) -> Path:
        target = self._unique_name(self._log_path, "damaged")
        file.seek(offset)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(file.read())
            out.flush()
            os.fsync(out.fileno())
        _fsync_path(self.directory)
        return target

    def _read_manifest(self) -> dict[str, dict]:
        """The manifest's tenants, if it is readable and belongs to this log; else nothing."""
        path = self.directory / MANIFEST_NAME
        try:
            manifest = json.loads(path.read_bytes())
            if manifest["log_id"] != self._log_id:
                return {}
            return {str(d): dict(e) for d, e in manifest["tenants"].items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as error:
            self._warn(f"{path} is unreadable ({error}); its stores will be rebuilt")
            return {}

    def _valid_stores(self, manifest: dict[str, dict],
                      entries: list[_Entry]) -> dict[bytes, tuple[Datastore, int]]:
        """Each tenant's store (and the log offset it covers up to) that the manifest names and
        that holds exactly that tenant's records before that offset."""
        boundaries = {self._data_start} | {entry.end for entry in entries}
        by_tenant: dict[bytes, list[_Entry]] = {}
        for entry in entries:
            by_tenant.setdefault(entry.tenant, []).append(entry)
        valid: dict[bytes, tuple[Datastore, int]] = {}
        for hex_digest, entry in manifest.items():
            try:
                digest, covered_end = bytes.fromhex(hex_digest), int(entry["covered_end"])
                store = Datastore.open(self.directory / str(entry["store"]))
                mine = [e for e in by_tenant.get(digest, []) if e.end <= covered_end]
                header = store.header
                ok = (covered_end in boundaries and header.vocab_size == self.vocab_size
                      and header.tokenizer_fingerprint == self.key
                      and header.num_documents == len(mine)
                      and header.num_tokens == sum(e.num_tokens for e in mine))
            except Exception as error:  # a missing or damaged store: rebuilt from the log
                self._warn(f"store of tenant {hex_digest[:8]} not usable ({error}); its records "
                           "will be compacted again")
                continue
            if ok:
                valid[digest] = (store, covered_end)
            else:
                self._warn(f"store {entry['store']} does not match the log; its records will be "
                           "compacted again")
        return valid

    def _load_tenants(self, file: BinaryIO, entries: list[_Entry],
                      covered: dict[bytes, tuple[Datastore, int]]) -> None:
        """Tenants from the replayed entries: covered records counted, later ones read as tail."""
        for entry in entries:
            state = self._tenants.get(entry.tenant)
            if state is None:
                store, covered_end = covered.get(entry.tenant, (None, self._data_start))
                state = self._tenants[entry.tenant] = _Tenant(store=store, covered_end=covered_end)
            if entry.end <= state.covered_end:
                state.store_records += 1
                state.store_tokens += entry.num_tokens
            else:
                state.tail.append(_TailRecord(entry.offset, entry.end, _read_tokens(file, entry)))
                state.tail_tokens += entry.num_tokens

    def _remove_stray_files(self) -> None:
        """Stores no tenant uses (superseded, or written by a build cut short) and temp files."""
        used = {state.store.path.name for state in self._tenants.values() if state.store}
        for path in self.directory.iterdir():
            stray_store = path.name.startswith("store-") and path.suffix == ".rds"
            if (stray_store and path.name not in used) or (
                    path.name.startswith(".") and path.name.endswith(".tmp")):
                path.unlink(missing_ok=True)

    # ---- appending

    def _append(self, data: bytes) -> bool:
        """Write and fsync one record at the log's end; on failure, cut the log back and warn."""
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            _datasync(self._fd)
        except OSError as error:
            self._warn(f"cannot append to {self._log_path} ({error}); this request is not "
                       "remembered")
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                pass  # the next open drops the torn record
            return False
        self._end += len(data)
        return True

    # ---- compaction

    def _maybe_compact(self, digest: bytes, state: _Tenant) -> None:
        """Queue a compaction of ``digest`` if its tail is past the threshold (under _lock)."""
        if (state.compacting or self._closed or not state.tail
                or state.tail_tokens <= max(self.compact_tokens, state.compact_after)):
            return
        try:
            future = self._executor.submit(self._compact, digest)
        except RuntimeError:  # close() shut the executor down meanwhile
            return
        state.compacting = True
        self._pending += 1
        future.add_done_callback(lambda done: self._compaction_done(digest, done))

    def _compact(self, digest: bytes) -> None:
        """Build a new store of the tenant's store + tail, then swap it in (the tail keeps what
        was recorded meanwhile), record it in the manifest and delete the old store file."""
        with self._lock:
            state = self._tenants[digest]
            old, tail = state.store, list(state.tail)
        cutoff = tail[-1].end
        path = self.directory / f"store-{digest.hex()}-{cutoff}.rds"
        earlier = (old.document(i) for i in range(old.num_documents)) if old else iter(())
        documents = itertools.chain(earlier, (record.tokens for record in tail))
        build_from_token_documents(documents, path, vocab_size=self.vocab_size,
                                   tokenizer_fingerprint=self.key,
                                   source="restdecode serve learned memory")
        os.chmod(path, 0o600)
        store = Datastore.open(path)
        with self._lock:
            state.store, state.covered_end = store, cutoff
            state.store_records += len(tail)
            state.store_tokens += sum(record.tokens.size for record in tail)
            state.set_tail([record for record in state.tail if record.offset >= cutoff])
            self._compactions += 1
        self._write_manifest()
        if old is not None:
            # Drafters of requests in flight may still search the old store: unlinking a mapped
            # file is safe on Linux, and the mapping goes away with its last user (no close()).
            old.path.unlink(missing_ok=True)

    def _compaction_done(self, digest: bytes, done: Future) -> None:
        error = None if done.cancelled() else done.exception()
        with self._idle:
            state = self._tenants[digest]
            state.compacting = False
            if error is not None:
                state.compact_after = state.tail_tokens + self.compact_tokens  # not at every record
                self._warn(f"compaction of tenant {digest.hex()[:8]} failed ({error}); its "
                           "records stay searchable from memory")
            else:
                self._maybe_compact(digest, state)  # what was recorded meanwhile may be enough
            self._pending -= 1
            self._idle.notify_all()

    def _write_manifest(self) -> None:
        """Write which log records each tenant's store covers (atomic; latest state wins)."""
        with self._manifest_lock:
            with self._lock:
                tenants = {
                    digest.hex(): {"store": state.store.path.name, "covered_end": state.covered_end,
                                   "records": state.store_records, "tokens": state.store_tokens}
                    for digest, state in self._tenants.items() if state.store is not None
                }
            manifest = {"version": MANIFEST_VERSION, "log_id": self._log_id, "key": self.key,
                        "vocab_size": self.vocab_size, "tenants": tenants}
            _write_atomically(self.directory / MANIFEST_NAME,
                              json.dumps(manifest, indent=1).encode())

    # ---- helpers

    def _bytes_on_disk(self) -> int:
        total = 0
        for entry in os.scandir(self.directory):
            try:
                total += entry.stat(follow_symlinks=False).st_size if entry.is_file() else 0
            except FileNotFoundError:  # a temporary file of a compaction, just renamed
                pass
        return total

    def _warn(self, message: str) -> None:
        self._say(f"warning: learned memory: {message}")

    def _unique_name(self, path: Path, kind: str) -> Path:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        candidate, number = path.with_name(f"{path.name}.{stamp}.{kind}"), 1
        while candidate.exists():
            number += 1
            candidate = path.with_name(f"{path.name}.{stamp}-{number}.{kind}")
        return candidate

    def _move_aside(self, path: Path, kind: str) -> Path:
        target = self._unique_name(path, kind)
        os.replace(path, target)
        _fsync_path(self.directory)
        return target


def _datasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)

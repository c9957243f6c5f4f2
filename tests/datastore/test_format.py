"""The datastore file: round trips in both widths, and a clear error for every kind of damage."""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.datastore import Datastore, build_from_token_documents
from restdecode.datastore.format import ALIGNMENT, token_width_for
from restdecode.errors import DatastoreError


def test_width_follows_vocabulary_size():
    assert token_width_for(49_152) == 2
    assert token_width_for(65_535) == 2  # ids 0..65534 stored as 1..65535, 0 = separator
    assert token_width_for(65_536) == 4
    assert token_width_for(262_144) == 4


@settings(max_examples=60, deadline=None)
@given(documents=st.lists(st.lists(st.integers(0, 69_999), max_size=30), max_size=6),
       large=st.booleans())
def test_round_trip(documents, large):
    vocab = 70_000 if large else 1_000
    documents = [[t % vocab for t in document] for document in documents]
    with tempfile.TemporaryDirectory() as directory:
        path = build_from_token_documents(documents, Path(directory, "s.rds"), vocab_size=vocab,
                                          tokenizer_fingerprint="sha256:abc", source="unit test")
        store = Datastore.open(path)
        kept = [d for d in documents if d]
        header = store.header
        assert (header.token_width, header.vocab_size) == ((4 if large else 2), vocab)
        assert (header.num_documents, header.num_tokens) == (len(kept), sum(map(len, kept)))
        assert header.tokenizer_fingerprint == "sha256:abc" and header.source == "unit test"
        assert [store.document(i).tolist() for i in range(store.num_documents)] == kept
        mapped = store._mapped
        for array in (mapped.tokens, mapped.suffix_array, mapped.doc_offsets):
            assert array.ctypes.data % ALIGNMENT == 0 or array.size == 0
        # the suffix array sorts the stored suffixes (document ends, stored as 0, first)
        stored = mapped.tokens.tolist()
        assert mapped.suffix_array.tolist() == sorted(range(len(stored)), key=lambda p: stored[p:])
        store.verify()
        store.close()


def test_open_is_zero_copy(tmp_path):
    path = build_from_token_documents([[1, 2, 3]] * 50, tmp_path / "s.rds", vocab_size=10)
    store = Datastore.open(path)
    tokens = store._mapped.tokens
    assert not tokens.flags.owndata and not tokens.flags.writeable
    assert store.bytes_per_token == path.stat().st_size / 150


@pytest.fixture
def store_bytes(tmp_path) -> tuple[Path, bytes]:
    path = build_from_token_documents([[1, 2, 3, 4], [5, 6], [7] * 40], tmp_path / "s.rds", vocab_size=100)
    return path, path.read_bytes()


def rewrite_header(data: bytes, change) -> bytes:
    """Re-encode the JSON header after ``change(fields)``, with a valid checksum."""
    magic, version, length, _ = struct.unpack_from("<8sIII", data)
    fields = json.loads(data[24:24 + length])
    change(fields)
    body = json.dumps(fields).encode()
    assert len(body) <= length
    body = body.ljust(length)
    return struct.pack("<8sIII4x", magic, version, length, zlib.crc32(body)) + body + data[24 + length:]


def expect_error(path: Path, data: bytes, pattern: str) -> None:
    path.write_bytes(data)
    with pytest.raises(DatastoreError, match=pattern) as error:
        Datastore.open(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    with pytest.raises(DatastoreError, match="no datastore file"):
        Datastore.open(tmp_path / "absent.rds")


def test_empty_file(store_bytes):
    expect_error(store_bytes[0], b"", "empty")


def test_bad_magic(store_bytes):
    path, data = store_bytes
    expect_error(path, b"PK\x03\x04" + data[4:], "not a restdecode datastore")


def test_unknown_version(store_bytes):
    path, data = store_bytes
    expect_error(path, data[:8] + struct.pack("<I", 99) + data[12:], "format version 99")


@pytest.mark.parametrize("cut", [3, 10, 30, -1, -100, "tokens", "suffix_array"])
def test_truncated(store_bytes, cut):
    path, data = store_bytes
    if isinstance(cut, str):
        store = Datastore.open(path)
        cut = store._mapped.sections[cut]["offset"] + 2
        store.close()
    expect_error(path, data[:cut], "truncated")


def test_corrupt_header_checksum(store_bytes):
    path, data = store_bytes
    position = data.index(b'"num_tokens"') + 16
    damaged = data[:position] + bytes([data[position] ^ 0x01]) + data[position + 1:]
    expect_error(path, damaged, "checksum")


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f.update(num_tokens=f["num_tokens"] + 1), "inconsistent lengths"),
    (lambda f: f.update(num_documents=2), "inconsistent lengths"),
    (lambda f: f["sections"]["suffix_array"].update(count=3), "inconsistent lengths"),
    (lambda f: f["sections"]["tokens"].update(dtype="<u4"), "dtype"),
    (lambda f: f.update(token_width=4), "token width 4 does not match a vocabulary of 100"),
    (lambda f: f["sections"]["tokens"].update(offset=33), "misplaced"),
    (lambda f: f.update(num_tokens="many"), "corrupt header"),
    (lambda f: f.pop("vocab_size"), "unreadable header"),
    (lambda f: f["sections"].pop("doc_offsets"), "section 'doc_offsets' is missing"),
])
def test_inconsistent_header(store_bytes, change, pattern):
    path, data = store_bytes
    expect_error(path, rewrite_header(data, change), pattern)


def test_trailing_bytes(store_bytes):
    path, data = store_bytes
    expect_error(path, data + b"\0" * 8, "unexpected bytes")


def test_document_offsets_must_span_the_tokens(store_bytes):
    path, data = store_bytes
    store = Datastore.open(path)
    offset = store._mapped.sections["doc_offsets"]["offset"]
    store.close()
    damaged = data[:offset] + np.int64(5).tobytes() + data[offset + 8:]
    expect_error(path, damaged, "document offsets")


def test_verify_detects_damaged_array(store_bytes):
    path, data = store_bytes
    store = Datastore.open(path)
    offset = store._mapped.sections["tokens"]["offset"]
    store.close()
    path.write_bytes(data[:offset] + b"\x09" + data[offset + 1:])
    with pytest.raises(DatastoreError, match="checksum mismatch in tokens"):
        Datastore.open(path).verify()

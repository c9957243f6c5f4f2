"""Damage and misuse end in a one-line DatastoreError naming the file, never a traceback or a
silently wrong store: corrupt token sections, odd headers, bad sources and outputs, leftovers."""

from __future__ import annotations

import builtins
import gzip
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_format import rewrite_header as rewritten_header
from restdecode.cli import main
from restdecode.datastore import Datastore, build_datastore, build_from_token_documents
from restdecode.errors import DatastoreError

VOCAB = 100


@pytest.fixture
def store_path(tmp_path) -> Path:
    return build_from_token_documents([[1, 2, 3, 4], [5, 6], [1, 2, 7, 8]], tmp_path / "s.rds",
                                      vocab_size=VOCAB)


def section_offset(path: Path, name: str) -> int:
    with Datastore.open(path) as store:
        return store.sections[name]["offset"]


def rewrite_header(path: Path, change) -> None:
    """Apply ``change(fields)`` to the JSON header and recompute its checksum (a valid file
    layout with a hand-made header)."""
    path.write_bytes(rewritten_header(path.read_bytes(), change))


def assert_cli_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


# ----------------------------------------------------------------------------- 1. token ids


def test_flipped_token_byte_never_reaches_a_search_result(store_path):
    # stored value of the "3" after "1 2" (stored as 4) becomes 4 + 0x0900: an id far above 100
    offset = section_offset(store_path, "tokens") + 2 * 2 + 1
    data = bytearray(store_path.read_bytes())
    data[offset] ^= 0x09
    store_path.write_bytes(bytes(data))
    store = Datastore.open(store_path)  # cheap open: the damage is found where ids leave the store
    with pytest.raises(DatastoreError, match=r"s\.rds: the token array holds an id outside the vocabulary of 100"):
        store.search([1, 2], span=4)
    with pytest.raises(DatastoreError, match="document 0 is damaged"):
        store.document(0)
    assert store.document(1).tolist() == [5, 6]  # undamaged parts still read
    assert store.search([5, 6]).match_length == 0


def test_ids_at_the_top_of_the_vocabulary_are_still_returned(tmp_path):
    path = build_from_token_documents([[1, 2, VOCAB - 1]], tmp_path / "s.rds", vocab_size=VOCAB)
    result = Datastore.open(path).search([1, 2])
    assert result.continuations[0, :1].tolist() == [VOCAB - 1]


def test_damaged_document_offsets_are_an_error(store_path):
    offset = section_offset(store_path, "doc_offsets") + 8
    data = store_path.read_bytes()
    store_path.write_bytes(data[:offset] + np.int64(2).tobytes() + data[offset + 8:])
    store = Datastore.open(store_path)
    with pytest.raises(DatastoreError, match="document 0 is damaged"):
        store.document(0)


def test_header_vocabulary_larger_than_the_tokenizer_is_refused(tmp_path, make_word_tokenizer):
    tokenizer = make_word_tokenizer(20)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"t": "w1 w2 w3"}) + "\n")
    path = build_datastore(tokenizer, f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)
    rewrite_header(path, lambda f: f.update(vocab_size=60_000))  # same fingerprint, larger ids allowed
    with pytest.raises(DatastoreError, match="60,000 tokens.*this model's tokenizer is"):
        Datastore.open(path, tokenizer)


# ----------------------------------------------------------------------------- 2. headers


@pytest.mark.parametrize("change, pattern", [
    (lambda f: f.update(num_tokens="abc"), "num_tokens = 'abc'"),
    (lambda f: f.update(sections=[1, 2]), "section 'tokens' is missing"),
    (lambda f: f["sections"]["tokens"].update(offset=-64), "section 'tokens' ="),
    (lambda f: f["sections"]["tokens"].update(dtype="<f8"), "unexpected dtype '<f8'"),
    (lambda f: f["sections"]["tokens"].update(dtype=["<u2"]), "unexpected dtype"),
    (lambda f: f["sections"]["tokens"].update(count=True), "section 'tokens' ="),
    (lambda f: f.update(vocab_size=0), "vocab_size = 0"),
    (lambda f: f.update(vocab_size=-5), "vocab_size = -5"),
    (lambda f: f.update(vocab_size=70_000), "token width 2 does not match a vocabulary of 70,000"),
    (lambda f: f.update(vocab_size=2**40), "token width 2 does not match"),
    (lambda f: f.update(format_version=2), "format_version = 2"),
    (lambda f: f.update(build_seconds="slow"), "build_seconds"),
    (lambda f: f.update(timings={"write": "fast"}), "timings"),
    (lambda f: f.update(source_stats=[]), "source_stats"),
    (lambda f: f.update(source=None), "source = None"),
    (lambda f: f.update(tokenizer_fingerprint=7), "tokenizer_fingerprint = 7"),
])
def test_hand_made_header_with_valid_checksum(store_path, capsys, change, pattern):
    rewrite_header(store_path, change)
    with pytest.raises(DatastoreError, match=pattern) as error:
        Datastore.open(store_path)
    assert str(store_path) in str(error.value)
    assert_cli_error(capsys, ["datastore-info", str(store_path)], str(store_path))


def test_deeply_nested_header(store_path):
    body = ("[" * 100_000 + "]" * 100_000).encode()
    store_path.write_bytes(struct.pack("<8sIII4x", b"RDSTORE\0", 1, len(body), zlib.crc32(body)) + body)
    with pytest.raises(DatastoreError, match="nested too deeply"):
        Datastore.open(store_path)


def test_unknown_sections_are_ignored(store_path, capsys):
    rewrite_header(store_path, lambda f: f["sections"].update(extra=5))
    assert main(["datastore-info", str(store_path)]) == 0
    assert "extra" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- 2. unreadable files


def test_unreadable_datastore(store_path, monkeypatch, capsys):
    real_open = builtins.open

    def refusing_open(file, *args, **kwargs):
        if Path(file) == store_path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    with pytest.raises(DatastoreError, match=f"cannot read the datastore {store_path}: Permission denied"):
        Datastore.open(store_path)
    assert_cli_error(capsys, ["datastore-info", str(store_path)], "Permission denied")


def test_directory_is_not_a_datastore(tmp_path, capsys):
    assert_cli_error(capsys, ["datastore-info", str(tmp_path)], f"{tmp_path} is a directory")


# ----------------------------------------------------------------------------- 2. --out


@pytest.mark.parametrize("kind", ["directory", "empty", "under a file"])
def test_bad_output_fails_before_the_tokenizer_loads(tmp_path, monkeypatch, capsys, kind):
    import restdecode.models

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the tokenizer was loaded before --out was checked")

    monkeypatch.setattr(restdecode.models, "load_tokenizer", no_tokenizer)
    (tmp_path / "afile").write_text("x")
    out, expected = {"directory": (str(tmp_path), "is a directory"),
                     "empty": ("", "output path is empty"),
                     "under a file": (str(tmp_path / "afile" / "s.rds"), "afile is not a directory")}[kind]
    assert_cli_error(capsys, ["build-datastore", "--model", "m", "--source", "text:*.txt", "--out", out],
                     expected)


def test_unwritable_output_folder(tmp_path, monkeypatch):
    from restdecode.datastore import format as store_format

    def read_only(path):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(store_format, "_create_temp_file", read_only)  # root ignores mode bits
    with pytest.raises(DatastoreError, match=r"cannot write the datastore .*s\.rds: Read-only file system"):
        store_format.check_output_path(tmp_path / "s.rds")


def test_bad_output_fails_before_the_corpus_is_read(tmp_path, make_word_tokenizer):
    def unread(stats):
        raise AssertionError("the corpus was read before the output was checked")
        yield  # pragma: no cover

    from restdecode.datastore import Corpus

    with pytest.raises(DatastoreError, match="is a directory"):
        build_datastore(make_word_tokenizer(5), Corpus("nothing", unread), tmp_path, progress=False)


# ----------------------------------------------------------------------------- 2. sources


def test_jsonl_with_invalid_utf8(tmp_path, make_word_tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"t": "w1 w2"}\n{"t": "w3 \xff w4"}\n')
    with pytest.raises(DatastoreError, match=r"c\.jsonl, line 2: not valid UTF-8"):
        build_datastore(make_word_tokenizer(5), f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)


def test_gz_that_is_not_gzip(tmp_path, make_word_tokenizer):
    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_text(json.dumps({"t": "w1"}) + "\n")
    with pytest.raises(DatastoreError, match=r"c\.jsonl\.gz is not a gzip file"):
        build_datastore(make_word_tokenizer(5), f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)


def test_truncated_gzip(tmp_path, make_word_tokenizer):
    corpus = tmp_path / "c.jsonl.gz"
    corpus.write_bytes(gzip.compress((json.dumps({"t": "w1 w2"}) + "\n").encode() * 50)[:-12])
    with pytest.raises(DatastoreError, match=r"cannot read .*c\.jsonl\.gz"):
        build_datastore(make_word_tokenizer(5), f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)


def test_deeply_nested_jsonl(tmp_path, make_word_tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"t": "w1"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DatastoreError, match=r"c\.jsonl, line 2: JSON nested too deeply"):
        build_datastore(make_word_tokenizer(5), f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)


def test_lone_surrogate_in_jsonl_is_replaced(tmp_path, make_word_tokenizer):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"t": "w1 \\ud800 w2"}\n')
    path = build_datastore(make_word_tokenizer(5), f"jsonl:{corpus}:t", tmp_path / "s.rds", progress=False)
    assert Datastore.open(path).header.num_tokens == 3  # w1, [UNK], w2


def test_deeply_nested_sharegpt(tmp_path):
    from restdecode.datastore.sources import iter_json_array

    path = tmp_path / "s.json"
    path.write_text("[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(DatastoreError, match="nested too deeply"):
        list(iter_json_array(path, {}))
    path.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(DatastoreError, match="not valid UTF-8"):
        list(iter_json_array(path, {}))


# ----------------------------------------------------------------------------- 3. skipped files


def test_binary_text_source_is_reported_and_an_empty_store_refused(tmp_path, make_word_tokenizer, capsys):
    (tmp_path / "a.txt").write_bytes(b"w1 w2\0\x01\x02")
    (tmp_path / "b.txt").write_bytes(bytes(range(128, 256)))
    tokenizer = make_word_tokenizer(5)
    with pytest.raises(DatastoreError, match=r"nothing to index \(0 documents, 0 tokens\); skipped 2 files "
                                             r"\(2 binary\): .*a\.txt, .*b\.txt.*--allow-empty"):
        build_datastore(tokenizer, f"text:{tmp_path}/*.txt", tmp_path / "s.rds", progress=False)
    assert not (tmp_path / "s.rds").exists()
    assert "warning: text: 2 files" in capsys.readouterr().err
    path = build_datastore(tokenizer, f"text:{tmp_path}/*.txt", tmp_path / "s.rds", progress=False,
                           allow_empty=True)
    store = Datastore.open(path)
    assert store.header.num_documents == 0 and store.header.source_stats["skipped_binary"] == 2
    assert [Path(name).name for name in store.header.source_stats["skipped_files"]] == ["a.txt", "b.txt"]
    assert len(store.search([1, 2])) == 0


def test_cli_reports_skipped_files_and_needs_allow_empty(tmp_path, monkeypatch, capsys, make_word_tokenizer):
    import restdecode.models

    monkeypatch.setattr(restdecode.models, "load_tokenizer", lambda *a, **k: make_word_tokenizer(5))
    for i in range(7):
        (tmp_path / f"bin{i}.txt").write_bytes(b"\0\0")
    argv = ["build-datastore", "--model", "m", "--source", f"text:{tmp_path}/*.txt",
            "--out", str(tmp_path / "s.rds"), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "skipped 7 files (7 binary): " in err and "and 2 more" in err
    assert "--allow-empty" in err.splitlines()[-1]
    assert main(argv + ["--allow-empty"]) == 0
    captured = capsys.readouterr()
    assert "0 tokens in 0 documents" in captured.out and "skipped 7 files" in captured.err


def test_one_bad_byte_keeps_the_file(tmp_path, make_word_tokenizer, capsys):
    (tmp_path / "latin1.txt").write_bytes("w1 w2 caf\xe9 w3 w4".encode("latin-1"))
    (tmp_path / "good.txt").write_text("w1 w2 w3")
    path = build_datastore(make_word_tokenizer(5), f"text:{tmp_path}/*.txt", tmp_path / "s.rds", progress=False)
    store = Datastore.open(path)
    assert store.header.num_documents == 2 and store.header.source_stats["replaced_invalid_utf8"] == 1
    assert "skipped_files" not in store.header.source_stats
    assert store.document(1).tolist() == [2, 3, 0, 0, 4, 5]  # "caf", "\ufffd": unknown words
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- 4. leftovers, mode

_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from restdecode.datastore import build_from_token_documents
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the write
build_from_token_documents([[1, 2, 3]], sys.argv[1], vocab_size=10)
"""


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_build(tmp_path):
    out = tmp_path / "s.rds"
    done = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(out)], capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".s.rds.pid") and not out.exists()
    dead_pid = leftovers[0].removeprefix(".s.rds.pid").split(".")[0]
    live = tmp_path / f".s.rds.pid{os.getppid()}.0a1b2c3d.tmp"  # a writer still running: kept
    live.write_bytes(b"partial")
    other = tmp_path / f".t.rds.pid{dead_pid}.00.tmp"  # another target's: not ours to judge
    other.write_bytes(b"partial")
    build_from_token_documents([[1, 2, 3]], out, vocab_size=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "s.rds"])


def test_old_style_temp_files_are_removed_when_a_day_old(tmp_path):
    from restdecode.datastore.format import remove_stale_temp_files

    out = tmp_path / "s.rds"
    old, recent = tmp_path / ".s.rds.abcd_123.tmp", tmp_path / ".s.rds.xyz98765.tmp"
    for path in (old, recent):
        path.write_bytes(b"partial")
    os.utime(old, (0, 0))
    assert remove_stale_temp_files(out) == [old]
    assert recent.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_datastore_mode_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = build_from_token_documents([[1, 2, 3]], tmp_path / "s.rds", vocab_size=10)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask

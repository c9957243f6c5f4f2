"""Building from real tokenizers: widths, document boundaries, tokenizer checks, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from restdecode.datastore import Datastore, build_datastore, tokenizer_fingerprint
from restdecode.errors import DatastoreError


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def test_build_and_search_with_word_tokenizer(tmp_path, make_word_tokenizer):
    tokenizer = make_word_tokenizer(100)
    corpus = write_jsonl(tmp_path / "c.jsonl", ["w1 w2 w3 w4", "w1 w2 w5", "w9 w1 w2"])
    path = build_datastore(tokenizer, f"jsonl:{corpus}:text", tmp_path / "s.rds", progress=False)
    store = Datastore.open(path, tokenizer)
    assert store.header.token_width == 2 and store.header.num_documents == 3
    assert store.header.num_tokens == 10
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert store.document(0).tolist() == ids("w1 w2 w3 w4")
    result = store.search(ids("w7 w1 w2"), span=3)
    # "w1 w2" ends document 3: only two occurrences have a continuation, none crosses documents
    assert result.match_length == 2 and result.num_occurrences == 2
    rows = {tuple(row[:n]) for row, n in zip(result.continuations.tolist(), result.lengths.tolist())}
    assert rows == {tuple(ids("w3 w4")), tuple(ids("w5"))}


def test_vocabulary_above_u16_builds_a_4_byte_store(tmp_path, make_word_tokenizer):
    tokenizer = make_word_tokenizer(70_000)
    text = "w69999 w65535 w12 w69999 w65535 w13"
    corpus = write_jsonl(tmp_path / "c.jsonl", [text])
    store = Datastore.open(build_datastore(tokenizer, f"jsonl:{corpus}:text", tmp_path / "s.rds",
                                           progress=False, workers=1), tokenizer)
    assert store.header.token_width == 4 and store.header.vocab_size == 70_001
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert max(ids) == 70_000 and store.document(0).tolist() == ids
    result = store.search(ids[:2], span=1)
    assert sorted(result.continuations[:, 0].tolist()) == sorted(ids[2::3])


def test_other_tokenizer_is_refused_by_name(tmp_path, make_word_tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", ["w1 w2"])
    built_with = make_word_tokenizer(50)
    path = build_datastore(built_with, f"jsonl:{corpus}:text", tmp_path / "s.rds", progress=False)
    other = make_word_tokenizer(50, prefix="v")
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(built_with)
    with pytest.raises(DatastoreError, match=r"built with tokenizer .*51 tokens.*this model's tokenizer is") as error:
        Datastore.open(path, other)
    assert tokenizer_fingerprint(built_with) in str(error.value) and str(path) in str(error.value)
    Datastore.open(path, built_with)  # the right one is accepted


def test_failing_build_leaves_the_previous_file_intact(tmp_path, make_word_tokenizer):
    tokenizer = make_word_tokenizer(20)
    good = write_jsonl(tmp_path / "good.jsonl", ["w1 w2 w3"])
    out = build_datastore(tokenizer, f"jsonl:{good}:text", tmp_path / "s.rds", progress=False)
    before = out.read_bytes()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "w4 w5"}) + "\n" + "{not json\n")
    with pytest.raises(DatastoreError, match="line 2"):
        build_datastore(tokenizer, f"jsonl:{bad}:text", out, progress=False)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "s.rds"]


@pytest.mark.assets
def test_smollm2_tokenizer_end_to_end(tmp_path):
    """The real SmolLM2 tokenizer (fetched asset): text documents in, continuations of real text out."""
    from restdecode.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct", quiet=True)
    texts = ["The capital of France is Paris. Paris is known for the Eiffel Tower.",
             "def add(a, b):\n    return a + b\n",
             "The capital of Italy is Rome. Rome is known for the Colosseum."]
    corpus = write_jsonl(tmp_path / "c.jsonl", texts)
    store = Datastore.open(build_datastore(tokenizer, f"jsonl:{corpus}:text", tmp_path / "s.rds",
                                           progress=False), tokenizer)
    assert store.header.token_width == 2 and store.header.vocab_size == len(tokenizer)
    context = tokenizer("Berlin? The capital of", add_special_tokens=False)["input_ids"]
    result = store.search(context, span=4)
    # "The" opens both documents but is " The" in the context: the match is " capital of"
    assert result.match_length == len(tokenizer(" capital of", add_special_tokens=False)["input_ids"])
    assert result.num_occurrences == 2
    decoded = sorted(tokenizer.decode(row[:n]) for row, n in zip(result.continuations, result.lengths))
    assert decoded == [" France is Paris.", " Italy is Rome."]
    assert np.all(result.counts == 1)

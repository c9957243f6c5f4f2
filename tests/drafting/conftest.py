"""Shared fixtures: a real datastore built from text files with a real word-level tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from restdecode.datastore import Datastore, build_datastore

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "park", "and", "slept"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {word: i for i, word in enumerate(["[UNK]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


@pytest.fixture(scope="module")
def store_and_documents(tmp_path_factory):
    """A store of a few documents with repeated phrases, the documents' token ids, the tokenizer."""
    directory = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    phrases = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "ran", "to", "the", "park"],
               ["the", "cat", "ran", "to", "the", "mat", "and", "slept"]]
    for index in range(6):
        words: list[str] = []
        while len(words) < 60:
            words += phrases[rng.integers(len(phrases))] if rng.random() < 0.6 else [rng.choice(WORDS)]
        (directory / f"doc{index}.txt").write_text(" ".join(words))
    tokenizer = word_tokenizer()
    path = build_datastore(tokenizer, f"text:{directory}/*.txt", tmp_path_factory.mktemp("store") / "s.rds",
                           progress=False, workers=1)
    documents = [tokenizer.encode(p.read_text(), add_special_tokens=False)
                 for p in sorted(directory.glob("*.txt"))]
    return Datastore.open(path, tokenizer), documents, tokenizer

"""Real (tiny) tokenizers for datastore tests: word-level vocabularies built in memory."""

from __future__ import annotations

import pytest


def word_tokenizer(num_words: int, *, prefix: str = "w"):
    """A fast word-level tokenizer: "[UNK]" = 0, then ``{prefix}0`` ... as ids 1..num_words.

    With more than 65,534 words its ids no longer fit a 2-byte store.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0} | {f"{prefix}{i}": i + 1 for i in range(num_words)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")


@pytest.fixture(scope="session")
def make_word_tokenizer():
    """The :func:`word_tokenizer` factory, as a fixture (test folders are not packages)."""
    return word_tokenizer

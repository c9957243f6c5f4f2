"""What a datastore records about its tokenizer: vocabulary size and fingerprint."""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

# Fingerprints of live tokenizer objects (hashing a 262k vocabulary takes a good fraction of a
# second); keyed by the object, checked against its current length in case tokens get added.
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()


_VOCAB_SIZES: "weakref.WeakKeyDictionary[Any, tuple[int, int]]" = weakref.WeakKeyDictionary()


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can produce, added tokens included (cached per live
    tokenizer: ``get_vocab`` builds a dict of the whole vocabulary, ~90 ms for 49k tokens)."""
    try:
        cached = _VOCAB_SIZES.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values(), default=-1) + 1)
    try:
        _VOCAB_SIZES[tokenizer] = (len(tokenizer), size)
    except TypeError:
        pass
    return size


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary (every ``token -> id`` pair, added tokens included).

    Two tokenizers with the same fingerprint map text pieces to the same ids, which is what a
    datastore needs; normalisation differences that keep the vocabulary are not detected.
    """
    try:
        cached = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable
        cached = None
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    pairs = sorted((token_id, token) for token, token_id in tokenizer.get_vocab().items())
    text = "".join(f"{token_id}\t{token}\n" for token_id, token in pairs)
    fingerprint = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    try:
        _FINGERPRINTS[tokenizer] = (len(tokenizer), fingerprint)
    except TypeError:
        pass
    return fingerprint


def tokenizer_name(tokenizer: Any) -> str:
    """A human-readable name for messages: the tokenizer's ``name_or_path``, or its class."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)

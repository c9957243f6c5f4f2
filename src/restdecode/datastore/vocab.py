"""What a datastore records about its tokenizer: vocabulary size and fingerprint."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable
from typing import Any

# Facts about live tokenizer objects, computed once: hashing a 262k vocabulary takes a good
# fraction of a second, and even ``get_vocab`` ~90 ms for 49k tokens. Keyed by the object and
# checked against its current length, in case tokens get added.
_CACHES: dict[str, "weakref.WeakKeyDictionary[Any, tuple[int, Any]]"] = {}


def _cached(name: str, tokenizer: Any, compute: Callable[[Any], Any]) -> Any:
    cache = _CACHES.setdefault(name, weakref.WeakKeyDictionary())
    try:
        cached = cache.get(tokenizer)
    except TypeError:  # not weak-referenceable
        return compute(tokenizer)
    if cached is not None and cached[0] == len(tokenizer):
        return cached[1]
    value = compute(tokenizer)
    cache[tokenizer] = (len(tokenizer), value)
    return value


def tokenizer_vocab_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can produce, added tokens included."""
    return _cached("vocab_size", tokenizer, _vocab_size)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of the vocabulary (every ``token -> id`` pair, added tokens included).

    Two tokenizers with the same fingerprint map text pieces to the same ids, which is what a
    datastore needs; normalisation differences that keep the vocabulary are not detected.
    """
    return _cached("fingerprint", tokenizer, _fingerprint)


def _vocab_size(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    return max(len(tokenizer), max(vocab.values(), default=-1) + 1)


def _fingerprint(tokenizer: Any) -> str:
    pairs = sorted((token_id, token) for token, token_id in tokenizer.get_vocab().items())
    text = "".join(f"{token_id}\t{token}\n" for token_id, token in pairs)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def tokenizer_name(tokenizer: Any) -> str:
    """A human-readable name for messages: the tokenizer's ``name_or_path``, or its class."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)

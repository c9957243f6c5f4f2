"""Suffix-array search: the longest suffix of a context found in the store and what follows it.

Runs once per decoding step, so the work is done by numba-compiled kernels over the
memory-mapped arrays (``cache=True``: compiled once per machine, per token/suffix-array dtype).

Semantics (checked against a brute-force scan in ``tests/datastore/test_search.py``):

* An *occurrence* of a pattern is a position where it appears in one document **and at least
  one token of the same document follows it** (an occurrence at a document's end has nothing to
  propose). ``match_length`` is the largest ``m`` in ``[min_suffix, max_suffix]`` whose suffix
  ``context[-m:]`` has an occurrence (0 when even ``min_suffix`` has none).
* Occurrences are ordered as their suffixes in the suffix array, i.e. by the tokens that follow
  the match (a document end sorts before every token). When there are more than
  ``max_matches``, the ones examined are an even sample of that order: indices
  ``(i * num_occurrences) // max_matches`` for ``i < max_matches``, so counts stay proportional
  to frequencies instead of favouring small token ids.
* Each examined occurrence contributes its continuation: up to ``span`` following tokens, cut at
  its document's end. Equal continuations are merged with a count; rows come out in
  lexicographic order (a shorter row before its extensions), because the suffix array order is
  exactly that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np

from restdecode.errors import DatastoreError

_CORRUPT = -1  # kernel status: a suffix-array entry points outside the token array
_OUT_OF_VOCABULARY = -2  # kernel status: a continuation holds a stored value above vocab_size


@dataclass
class SearchResult:
    """What the store proposes after a context (see the module docstring for the semantics)."""

    match_length: int  # length of the longest suffix of `context` found (0: none found)
    continuations: np.ndarray  # (n, span) int64, unique continuations, padded with -1 after their end
    lengths: np.ndarray  # (n,) int64, true length of each continuation (>= 1)
    counts: np.ndarray  # (n,) int64, how many of the examined occurrences are followed by it
    num_occurrences: int  # occurrences of the suffix in the store (before the max_matches cap)

    @classmethod
    def empty(cls, span: int) -> "SearchResult":
        """No suffix found: no continuation."""
        zeros = np.zeros(0, dtype=np.int64)
        return cls(0, np.zeros((0, span), dtype=np.int64), zeros, zeros.copy(), 0)

    def __len__(self) -> int:
        return int(self.lengths.size)


# REST's published search configuration (He et al. 2024), the default of every search: the
# longest suffix of the context from 16 down to 2 tokens, at most 5,000 occurrences examined,
# continuations of 10 tokens.
MAX_SUFFIX = 16
MIN_SUFFIX = 2
MAX_MATCHES = 5000
SPAN = 10


def search_arrays(
    tokens: np.ndarray,
    suffix_array: np.ndarray,
    vocab_size: int,
    context: Sequence[int] | np.ndarray,
    *,
    max_suffix: int = MAX_SUFFIX,
    min_suffix: int = MIN_SUFFIX,
    max_matches: int = MAX_MATCHES,
    span: int = SPAN,
    source: str = "datastore",
) -> SearchResult:
    """Search the stored arrays (``tokens`` holds ids + 1, 0 between documents)."""
    if not 1 <= min_suffix <= max_suffix:
        raise ValueError(f"need 1 <= min_suffix <= max_suffix, got {min_suffix} and {max_suffix}")
    if max_matches < 1 or span < 1:
        raise ValueError(f"max_matches and span must be >= 1, got {max_matches} and {span}")
    query = _stored_query(context, max_suffix, vocab_size)
    if query.size < min_suffix or tokens.size == 0:
        return SearchResult.empty(span)
    match_length, num_occurrences, rows, lengths, counts = _search_kernel(
        tokens, suffix_array, query, min_suffix, max_matches, span, vocab_size)
    if match_length == _CORRUPT:
        raise DatastoreError(f"{source}: the suffix array points outside the token array; the file "
                             "is corrupt (rebuild it)")
    if match_length == _OUT_OF_VOCABULARY:
        raise DatastoreError(f"{source}: the token array holds an id outside the vocabulary of "
                             f"{vocab_size:,} tokens; the file is corrupt (rebuild it)")
    if match_length == 0:
        return SearchResult.empty(span)
    return SearchResult(int(match_length), rows, lengths, counts, int(num_occurrences))


def _stored_query(context: Sequence[int] | np.ndarray, max_suffix: int, vocab_size: int) -> np.ndarray:
    """The last ``max_suffix`` context ids as stored values (id + 1), cut after any id that
    cannot be in the store (negative or >= vocab_size): no suffix containing it can match."""
    tail = np.asarray(context[-max_suffix:] if len(context) else [], dtype=np.int64).reshape(-1)
    invalid = np.flatnonzero((tail < 0) | (tail >= vocab_size))
    if invalid.size:
        tail = tail[invalid[-1] + 1:]
    return tail + 1


@numba.njit(cache=True, nogil=True)
def _compare(tokens, start, pattern, length):  # pragma: no cover - compiled
    """Sign of tokens[start:start+length] versus pattern[:length] (a shorter suffix is smaller)."""
    n = tokens.shape[0]
    for k in range(length):
        if start + k >= n:
            return -1
        a = np.int64(tokens[start + k])
        b = pattern[k]
        if a != b:
            return -1 if a < b else 1
    return 0


@numba.njit(cache=True, nogil=True)
def _bound(tokens, sa, pattern, length, lo, hi, upper):  # pragma: no cover - compiled
    """First index in [lo, hi) whose suffix is >= pattern (> pattern when ``upper``) on its first
    ``length`` tokens; -1 when the suffix array points outside the token array."""
    n = tokens.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        position = sa[mid]
        if position < 0 or position >= n:
            return -1
        sign = _compare(tokens, position, pattern, length)
        if sign < 0 or (upper and sign == 0):
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _occurrences(tokens, sa, query, m, pattern):  # pragma: no cover - compiled
    """[lo, hi) of the suffixes starting with query[-m:] followed by a real token (stored value
    >= 1: the separator 0 sorts first, so those are the tail of the pattern's range)."""
    start = query.shape[0] - m
    for k in range(m):
        pattern[k] = query[start + k]
    pattern[m] = 1
    n = sa.shape[0]
    lo = _bound(tokens, sa, pattern, m, 0, n, False)
    if lo < 0:
        return -1, -1
    hi = _bound(tokens, sa, pattern, m, lo, n, True)
    if hi < 0:
        return -1, -1
    lo = _bound(tokens, sa, pattern, m + 1, lo, hi, False)
    return lo, hi


@numba.njit(cache=True, nogil=True)
def _search_kernel(tokens, sa, query, min_suffix, max_matches, span, vocab_size):  # pragma: no cover
    """Longest matching suffix (binary search on its length: if a suffix occurs with a following
    token, so does every shorter one), then its gathered continuations (a negative first value:
    the status of a corrupt store)."""
    pattern = np.empty(query.shape[0] + 1, dtype=np.int64)
    lo, hi = _occurrences(tokens, sa, query, min_suffix, pattern)
    if lo < 0:
        return _CORRUPT, 0, np.empty((0, span), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    if hi <= lo:
        return 0, 0, np.empty((0, span), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    best, best_lo, best_hi = min_suffix, lo, hi
    short, long = min_suffix, query.shape[0]
    while short < long:  # invariant: `short` occurs; lengths above `long` do not
        mid = (short + long + 1) // 2
        lo, hi = _occurrences(tokens, sa, query, mid, pattern)
        if lo < 0:
            return _CORRUPT, 0, np.empty((0, span), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        if hi > lo:
            short, best, best_lo, best_hi = mid, mid, lo, hi
        else:
            long = mid - 1
    status, rows, lengths, counts = _gather(tokens, sa, best_lo, best_hi, best, max_matches, span, vocab_size)
    if status < 0:
        return status, 0, rows, lengths, counts
    return best, best_hi - best_lo, rows, lengths, counts


@numba.njit(cache=True, nogil=True)
def _gather(tokens, sa, lo, hi, m, max_matches, span, vocab_size):  # pragma: no cover - compiled
    """Continuations of an even sample of at most ``max_matches`` occurrences in [lo, hi),
    merged with counts. Equal continuations are neighbours in suffix-array order. The first
    value is 0, or ``_CORRUPT`` when a suffix-array entry points outside the token array, or
    ``_OUT_OF_VOCABULARY`` when a continuation holds an id >= ``vocab_size`` (a damaged token
    array must never hand the model an id outside its embedding)."""
    n = tokens.shape[0]
    total = hi - lo
    k = min(total, max_matches)
    starts = np.empty(k, np.int64)
    lengths = np.empty(k, np.int64)
    is_new = np.zeros(k, np.bool_)
    num_rows = 0
    previous = -1
    for i in range(k):
        position = sa[lo + (i * total) // k]
        if position < 0 or position >= n:
            return _CORRUPT, np.empty((0, span), np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        start = position + m
        length = 0
        while length < span and start + length < n and tokens[start + length] != 0:
            if np.int64(tokens[start + length]) > vocab_size:  # stored values are ids + 1
                return (_OUT_OF_VOCABULARY, np.empty((0, span), np.int64), np.empty(0, np.int64),
                        np.empty(0, np.int64))
            length += 1
        starts[i] = start
        lengths[i] = length
        if length == 0:  # cannot happen in a valid store: skip rather than propose nothing
            continue
        new = previous < 0 or lengths[previous] != length
        if not new:
            prev_start = starts[previous]
            for j in range(length):
                if tokens[start + j] != tokens[prev_start + j]:
                    new = True
                    break
        is_new[i] = new
        num_rows += new
        previous = i
    rows = np.full((num_rows, span), -1, np.int64)
    row_lengths = np.zeros(num_rows, np.int64)
    counts = np.zeros(num_rows, np.int64)
    row = -1
    for i in range(k):
        if lengths[i] == 0:
            continue
        if is_new[i]:
            row += 1
            row_lengths[row] = lengths[i]
            for j in range(lengths[i]):
                rows[row, j] = np.int64(tokens[starts[i] + j]) - 1
        counts[row] += 1
    return 0, rows, row_lengths, counts

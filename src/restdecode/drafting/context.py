"""Context drafting: prompt lookup done right.

The longest suffix of the context (prompt + output so far) that occurred earlier in the context
is found, and the continuations of *all* its earlier occurrences become a weighted tree (each
occurrence counts 1; among equal counts, recent occurrences win) instead of the single chain of
classic prompt lookup.

The index maps every ``min_suffix``-gram to the positions right after its occurrences. It is
extended with the new tokens only, each time ``propose`` sees a longer context; the candidates
for a longer match are the occurrences of the last ``min_suffix``-gram, compared backwards in one
vectorised step. With ``min_suffix`` 1 the bigrams are indexed too, and a single token's
occurrences (thousands, for a newline) are only looked up when the last two tokens never
occurred before: every one of them then matches exactly one token, and nothing is compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from restdecode.datastore.search import MAX_SUFFIX, MIN_SUFFIX
from restdecode.drafting.base import (ContinuationDrafter, StepFeedback, WeightedContinuations,
                                     context_array)

# Recency only breaks ties: all the bonuses of a node together stay below one occurrence.
_RECENCY_BONUS = 0.5

# Grams indexed at once from which numpy groups them (a memory's outputs, a long prompt).
_BULK_GRAMS = 256


class ContextDrafter(ContinuationDrafter):
    """Drafts from earlier occurrences of the context's longest repeated suffix.

    Args:
        budget: nodes in the proposed tree.
        max_suffix: longest suffix tried.
        min_suffix: shortest suffix accepted (1 proposes after any repeated token).
        span: tokens per continuation.
        max_matches: at most this many occurrences (the most recent) give continuations.

    ``last_match_length`` holds the suffix length matched by the last proposal (0: none).
    """

    def __init__(
        self,
        *,
        budget: int = 32,
        max_suffix: int = MAX_SUFFIX,
        min_suffix: int = MIN_SUFFIX,
        span: int = 10,
        max_matches: int = 1000,
    ) -> None:
        super().__init__(budget=budget)
        if not 1 <= min_suffix <= max_suffix:
            raise ValueError(f"need 1 <= min_suffix <= max_suffix, got {min_suffix}, {max_suffix}")
        if span < 1 or max_matches < 1:
            raise ValueError(f"span and max_matches must be >= 1, got {span}, {max_matches}")
        self.max_suffix = max_suffix
        self.min_suffix = min_suffix
        self.span = span
        self.max_matches = max_matches
        # n-gram lengths indexed, longest first: bigrams too when single tokens may match.
        self._gram_lengths = sorted({min_suffix, min(max(min_suffix, 2), max_suffix)},
                                    reverse=True)
        self.last_match_length = 0
        self.reset()

    def reset(self) -> None:
        """Forget the indexed context."""
        self._tokens = np.empty(1024, dtype=np.int64)
        self._length = 0
        self._context_start = 0  # where the context begins in the indexed tokens (subclasses
        # may index other tokens before it, e.g. a memory of earlier outputs)
        self._tail: list[int] = []  # the last (longest gram - 1) tokens, to form the next grams
        self._ends: dict[tuple[int, ...], list[int]] = {}
        self.last_match_length = 0

    def observe(self, feedback: StepFeedback) -> None:
        """Nothing to do: ``propose`` indexes whatever the context gained since last time."""

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Continuations of every earlier occurrence of the longest repeated suffix."""
        self._sync(token_ids)
        ends, match_length = self._longest_match_occurrences()
        self.last_match_length = match_length
        if ends.size == 0:
            return WeightedContinuations.empty(self.span)
        ends = ends[-self.max_matches:]
        return self._continuations_after(ends, match_length)

    def _sync(self, token_ids: Sequence[int]) -> None:
        """Index the tokens ``token_ids`` has beyond the indexed context (all of them when it is
        not an extension of it: a new generation started without ``reset``)."""
        start = self._context_start
        indexed = self._length - start
        if len(token_ids) < indexed or (
            indexed
            and (
                int(token_ids[indexed - 1]) != self._tokens[start + indexed - 1]
                or int(token_ids[0]) != self._tokens[start]
            )
        ):
            self.reset()
            indexed = self._length - self._context_start
        if len(token_ids) > indexed:
            self._append(context_array(token_ids[indexed:]))

    def _append(self, new_tokens: np.ndarray) -> None:
        start = self._length
        end = start + new_tokens.size
        if end > self._tokens.size:
            grown = np.empty(max(end, 2 * self._tokens.size), dtype=np.int64)
            grown[:start] = self._tokens[:start]
            self._tokens = grown
        self._tokens[start:end] = new_tokens
        self._length = end
        window = self._tail + new_tokens.tolist()
        first_end = start - len(self._tail)  # position of window[0]
        longest = self._gram_lengths[0]
        for n in self._gram_lengths:
            # Grams ending in the new tokens only: the tail's own grams are indexed already.
            first = max(0, len(self._tail) - n + 1)
            if len(window) - n + 1 - first >= _BULK_GRAMS:
                self._index_bulk(window, first_end, n, first)
                continue
            for offset in range(first, len(window) - n + 1):
                gram = tuple(window[offset:offset + n])
                self._ends.setdefault(gram, []).append(first_end + offset + n)
        self._tail = window[len(window) - (longest - 1):] if longest > 1 else []

    def _index_bulk(self, window: list[int], first_end: int, n: int, first: int) -> None:
        """Index the ``n``-grams of ``window`` from offset ``first`` on, grouped with numpy (a
        whole memory is indexed at every new generation): the same lists as one by one."""
        grams = np.lib.stride_tricks.sliding_window_view(np.asarray(window, dtype=np.int64),
                                                         n)[first:]
        ends = first_end + n + np.arange(first, first + len(grams))
        if n == 1:
            codes = grams[:, 0]
        elif n == 2:  # one exact int64 per bigram (ids and the separators lie in [-2, 2**32 - 2))
            codes = grams[:, 0] * (1 << 32) + (grams[:, 1] + 2)
        else:
            codes = np.unique(grams, axis=0, return_inverse=True)[1].reshape(-1)
        order = np.argsort(codes, kind="stable")  # each gram's ends stay in context order
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
        keys = map(tuple, grams[order[starts]].tolist())
        for gram, gram_ends in zip(keys, np.split(ends[order], starts[1:])):
            self._ends.setdefault(gram, []).extend(gram_ends.tolist())

    def _longest_match_occurrences(self) -> tuple[np.ndarray, int]:
        """Ends (position after the match) of the earlier occurrences of the longest suffix, in
        context order, and its length; empty and 0 when not even ``min_suffix`` tokens repeat."""
        length = self._length
        if length <= self.min_suffix:
            return np.zeros(0, dtype=np.int64), 0
        for n in self._gram_lengths:
            if length <= n:
                continue
            key = tuple(self._tokens[length - n:length].tolist())
            candidates = np.asarray(self._ends.get(key, ()), dtype=np.int64)
            candidates = candidates[candidates < length]  # the suffix itself is not earlier
            if candidates.size == 0:
                continue
            if n == 1:  # no earlier bigram: every occurrence matches exactly one token
                return candidates, 1
            matched = self._backward_match_lengths(candidates)
            best = int(matched.max())
            return candidates[matched == best], best
        return np.zeros(0, dtype=np.int64), 0

    def _backward_match_lengths(self, ends: np.ndarray) -> np.ndarray:
        """How many tokens before each end agree with the context's suffix (<= max_suffix)."""
        tokens, length = self._tokens, self._length
        offsets = np.arange(1, min(self.max_suffix, length) + 1)
        suffix = tokens[length - offsets]
        positions = ends[:, None] - offsets[None, :]
        agree = (positions >= 0) & (tokens[np.maximum(positions, 0)] == suffix[None, :])
        return np.where(agree.all(axis=1), offsets.size, agree.argmin(axis=1))

    def _continuations_after(self, ends: np.ndarray, match_length: int) -> WeightedContinuations:
        """Up to ``span`` tokens after each end, weight 1 plus a small recency bonus."""
        length = self._length
        positions = ends[:, None] + np.arange(self.span)[None, :]
        inside = positions < length
        rows = np.where(inside, self._tokens[np.minimum(positions, length - 1)], -1)
        recency = _RECENCY_BONUS * (ends / length) / ends.size
        return WeightedContinuations(rows, inside.sum(axis=1), 1.0 + recency, match_length)

"""Retrieval drafting (REST): continuations of the context's longest suffix found in a datastore."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from restdecode.datastore.search import MAX_MATCHES, MAX_SUFFIX, MIN_SUFFIX, SPAN
from restdecode.drafting.base import ContinuationDrafter, WeightedContinuations, context_array


class SuffixSearcher(Protocol):
    """What the drafter needs of a datastore (``restdecode.datastore.Datastore`` provides it)."""

    def search(
        self,
        context: Sequence[int] | np.ndarray,
        max_suffix: int = MAX_SUFFIX,
        min_suffix: int = MIN_SUFFIX,
        max_matches: int = MAX_MATCHES,
        span: int = SPAN,
    ) -> Any:
        """A ``SearchResult``: match_length, continuations, lengths, counts, num_occurrences."""
        ...


class RetrievalDrafter(ContinuationDrafter):
    """REST: the ``budget`` most frequent prefixes of what follows the context in a datastore.

    The defaults are REST's published configuration: suffixes of 16 down to 2 tokens, up to
    5,000 occurrences, continuations of 10 tokens, 64 tree nodes (counted as nodes here).
    ``last_match_length`` / ``last_num_occurrences`` describe the last search.
    """

    def __init__(
        self,
        datastore: SuffixSearcher,
        *,
        budget: int = 64,
        max_suffix: int = MAX_SUFFIX,
        min_suffix: int = MIN_SUFFIX,
        max_matches: int = MAX_MATCHES,
        span: int = SPAN,
    ) -> None:
        super().__init__(budget=budget)
        self.datastore = datastore
        self.max_suffix = max_suffix
        self.min_suffix = min_suffix
        self.max_matches = max_matches
        self.span = span
        self.last_match_length = 0
        self.last_num_occurrences = 0

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """The datastore's continuations of the longest matching suffix, weighted by count."""
        result = self.datastore.search(
            context_array(token_ids, last=self.max_suffix),
            max_suffix=self.max_suffix,
            min_suffix=self.min_suffix,
            max_matches=self.max_matches,
            span=self.span,
        )
        self.last_match_length = int(result.match_length)
        self.last_num_occurrences = int(result.num_occurrences)
        if result.match_length == 0 or len(result.lengths) == 0:
            return WeightedContinuations.empty(self.span)
        return WeightedContinuations(result.continuations, result.lengths, result.counts,
                                     int(result.match_length))

"""Several drafters merged into one tree (e.g. datastore + context: more accepted tokens per
step than either alone)."""

from __future__ import annotations

from collections.abc import Sequence

from restdecode.drafting.base import ContinuationDrafter, WeightedContinuations, concatenate


class CombinedDrafter(ContinuationDrafter):
    """Merges the weighted continuations of several drafters into one trie.

    Each source's weights are normalised to sum 1 and multiplied by the source's weight
    (default: 1 each), so a source with a thousand matches does not drown one with three;
    identical continuations from two sources add up.
    """

    def __init__(
        self,
        drafters: Sequence[ContinuationDrafter],
        *,
        budget: int,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(budget=budget)
        self.drafters = list(drafters)
        if not self.drafters:
            raise ValueError("CombinedDrafter needs at least one drafter")
        for drafter in self.drafters:
            if not isinstance(drafter, ContinuationDrafter):
                raise TypeError(f"{type(drafter).__name__} does not propose weighted continuations")
        self.weights = [1.0] * len(self.drafters) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.drafters) or any(w < 0 for w in self.weights):
            raise ValueError(f"need one non-negative weight per drafter, got {self.weights}")

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Every source's continuations, each source's weights summing to its source weight."""
        return concatenate([
            drafter.continuations(token_ids).normalized(weight)
            for drafter, weight in zip(self.drafters, self.weights)
        ])

    @property
    def last_match_length(self) -> int:
        """The longest suffix match among the sources' last proposals (0: none matched)."""
        return max((int(getattr(d, "last_match_length", 0) or 0) for d in self.drafters), default=0)

    def observe(self, accepted_ids: Sequence[int]) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.observe(accepted_ids)

    def reset(self) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.reset()

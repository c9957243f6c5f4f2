"""Several drafters merged into one tree (e.g. datastore + context: more accepted tokens per
step than either alone)."""

from __future__ import annotations

from collections.abc import Sequence

from restdecode.drafting.base import (
    ContinuationDrafter,
    Drafter,
    StepFeedback,
    WeightedContinuations,
    concatenate,
)


class CombinedDrafter(ContinuationDrafter):
    """Merges the trees of several drafters into one trie of at most ``budget`` nodes.

    Any drafter works whose trees score their nodes (``DraftTree.scores``, conditional
    confidences; an unscored tree counts every node as certain). A node weighs its path
    probability in its source's tree, times the source's weight (default: 1 each), so a source
    with a thousand matches does not drown one with three; a path that two sources propose adds
    up. The merged tree keeps the heaviest nodes and the longest match length of its sources.
    """

    def __init__(
        self,
        drafters: Sequence[Drafter],
        *,
        budget: int,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__(budget=budget)
        self.drafters = list(drafters)
        if not self.drafters:
            raise ValueError("CombinedDrafter needs at least one drafter")
        for drafter in self.drafters:
            if not isinstance(drafter, Drafter):
                raise TypeError(f"{type(drafter).__name__} is not a Drafter (propose, observe, reset)")
        self.weights = [1.0] * len(self.drafters) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.drafters) or any(w < 0 for w in self.weights):
            raise ValueError(f"need one non-negative weight per drafter, got {self.weights}")

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Every source's tree as weighted paths, each source's weights summing to its weight."""
        return concatenate([
            WeightedContinuations.from_tree(drafter.propose(token_ids)).normalized(weight)
            for drafter, weight in zip(self.drafters, self.weights)
        ])

    def observe(self, feedback: StepFeedback) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.observe(feedback)

    def reset(self) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.reset()

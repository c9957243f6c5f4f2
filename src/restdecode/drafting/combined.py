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
    reads_hidden_states,
)


def weighted_paths(drafter: Drafter, token_ids: Sequence[int]) -> WeightedContinuations:
    """What ``drafter`` proposes after ``token_ids``, as weighted continuations."""
    if isinstance(drafter, ContinuationDrafter):
        return drafter.continuations(token_ids)
    return WeightedContinuations.from_tree(drafter.propose(token_ids))


def merge_weighted(parts: Sequence[WeightedContinuations], weights: Sequence[float],
                   match_power: float = 0.0,
                   absolute: Sequence[bool] | None = None) -> WeightedContinuations:
    """All of ``parts`` in one set, each part's weights normalised to sum to its weight (times
    ``match_length ** match_power``, a part that matched nothing counting 1); a part marked
    ``absolute`` keeps its weights (probabilities) times its weight instead."""
    absolute = absolute or [False] * len(parts)
    return concatenate([
        part.scaled(weight) if keep else
        part.normalized(weight * max(part.match_length, 1) ** match_power)
        for part, weight, keep in zip(parts, weights, absolute)])


def weighs_probabilities(drafter: Drafter) -> bool:
    """Whether ``drafter``'s tree scores are the model's own probabilities (a trained drafter
    of its distributions), whose path probabilities a merge keeps as they are: normalising a
    source that is 20% sure to weigh as much as one that is 90% sure would hide the difference."""
    return bool(getattr(drafter, "weighs_probabilities", False))


class CombinedDrafter(ContinuationDrafter):
    """Merges the trees of several drafters into one trie of at most ``budget`` nodes.

    Any drafter works whose trees score their nodes (``DraftTree.scores``, conditional
    confidences; an unscored tree counts every node as certain): a node weighs its path
    probability in its source's tree. A :class:`ContinuationDrafter` source gives its weighted
    continuations themselves, before any cut to its own budget (exact, and no tree to build).
    Each source's weights are normalised to sum to the source's weight (default: 1 each), so a
    source with a thousand matches does not drown one with three; a source whose scores are the
    model's own probabilities (:func:`weighs_probabilities`, e.g. the draft chain) keeps its path
    probabilities times its weight instead. A path that two sources propose adds up. The merged tree keeps the heaviest nodes and the longest match length.

    ``match_power`` > 0 trusts a source more the longer the context suffix it matched: its weight
    is multiplied by ``match_length ** match_power`` (a source that matched nothing counts 1).
    ``match_from = i``: the merged tree carries the match length of source ``i`` instead of the
    longest of all (the planner calibrates by it: the datastore nearly always matches a few
    tokens, while how long a suffix this generation repeats says how far its own continuations
    will be accepted).

    Tokens a source *sampled* (``DraftTree.draws``, e.g. a draft model's) stay draws in the
    merged tree, below the node of the same path, in source order; a sampled node that another
    source also proposes is one node, still tried first as a draw.
    """

    def __init__(
        self,
        drafters: Sequence[Drafter],
        *,
        budget: int,
        weights: Sequence[float] | None = None,
        match_power: float = 0.0,
        match_from: int | None = None,
    ) -> None:
        super().__init__(budget=budget)
        self.match_power = float(match_power)
        self.drafters = list(drafters)
        if not self.drafters:
            raise ValueError("CombinedDrafter needs at least one drafter")
        if match_from is not None and not 0 <= match_from < len(self.drafters):
            raise ValueError(f"match_from must index a drafter, got {match_from}")
        self.match_from = match_from
        for drafter in self.drafters:
            if not isinstance(drafter, Drafter):
                raise TypeError(f"{type(drafter).__name__} is not a Drafter (propose, observe, reset)")
        self.weights = [1.0] * len(self.drafters) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.drafters) or any(w < 0 for w in self.weights):
            raise ValueError(f"need one non-negative weight per drafter, got {self.weights}")

    @property
    def reads_hidden_states(self) -> bool:
        """Whether a source drafts from the model's hidden state."""
        return any(reads_hidden_states(drafter) for drafter in self.drafters)

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Every source's tree as weighted paths, each source's weights summing to its weight
        (a source of probabilities: its path probabilities times its weight)."""
        found = [weighted_paths(drafter, token_ids) for drafter in self.drafters]
        merged = merge_weighted(found, self.weights, self.match_power,
                                [weighs_probabilities(drafter) for drafter in self.drafters])
        if self.match_from is None:
            return merged
        return WeightedContinuations(merged.continuations, merged.lengths, merged.weights,
                                     found[self.match_from].match_length)

    def observe(self, feedback: StepFeedback) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.observe(feedback)

    def reset(self) -> None:
        """Forward to every source."""
        for drafter in self.drafters:
            drafter.reset()

"""The drafter protocol, and the base of drafters that propose weighted continuations.

A drafter guesses what follows the context; it knows nothing about models or verification.
Conventions: ``propose(token_ids)`` receives the whole context *including* the pending token (its
last element) and proposes a tree of what follows it; ``observe(feedback)`` receives what the
last step verified and committed (:class:`StepFeedback`); ``reset()`` starts a new generation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from restdecode.drafting.draws import Draws, anchor_paths, concatenate_draws
from restdecode.drafting.tree import DraftTree, path_probabilities

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)
class StepFeedback:
    """What one step verified and committed, handed to the drafter that proposed its tree.

    * ``committed``: the tokens the step added (accepted draft tokens + the bonus token); after
      the prefill, the first token alone;
    * ``tree``: the tree as verified (after any depth cut by the loop; empty after the prefill);
    * ``accepted_nodes``: indices into ``tree`` of the accepted path, root's child first;
    * ``hidden``: the model's final hidden state (after its last norm) where the logits that chose
      the step's last token were computed, for drafters that read it
      (:func:`reads_hidden_states`); None otherwise, or when the backend gives none.
    """

    committed: Sequence[int]
    tree: DraftTree = field(default_factory=DraftTree.empty)
    accepted_nodes: Sequence[int] = ()
    hidden: "torch.Tensor | None" = None


def reads_hidden_states(drafter: object) -> bool:
    """Whether ``drafter`` (or a drafter it is made of) drafts from the model's hidden state, so
    that the loop must hand it over (``StepFeedback.hidden``)."""
    return bool(getattr(drafter, "reads_hidden_states", False))


@runtime_checkable
class Drafter(Protocol):
    """Anything that proposes draft trees for the decoding loop.

    A tree may carry per-node ``scores`` (conditional confidences, which the planner and
    :class:`~restdecode.drafting.CombinedDrafter` use) and the ``match_length`` it was drawn from.
    """

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """A draft of what follows ``token_ids`` (whole context, pending token last)."""
        ...

    def observe(self, feedback: StepFeedback) -> None:
        """Learn from what the last step verified and committed."""
        ...

    def reset(self) -> None:
        """Forget per-generation state: a new generation starts."""
        ...


@dataclass(frozen=True, eq=False)
class WeightedContinuations:
    """Candidate continuations of the context, each with a weight (e.g. an occurrence count).

    * ``continuations``: (n, L) int64 tokens, padded with -1 after each row's end;
    * ``lengths``: (n,) int64 true length of each row (1..L);
    * ``weights``: (n,) float64, higher = more likely;
    * ``match_length``: length of the context suffix they were found after (0: none, or unknown);
    * ``draws``: tokens sampled below some of their prefixes (anchors = row indices, with the
      prefix's depth; :mod:`restdecode.drafting.draws`), carried into the tree they become.
    """

    continuations: np.ndarray
    lengths: np.ndarray
    weights: np.ndarray
    match_length: int = 0
    draws: Draws | None = None

    def __post_init__(self) -> None:
        continuations = np.asarray(self.continuations, dtype=np.int64)
        if continuations.size == 0 and continuations.ndim != 2:
            continuations = continuations.reshape(0, 0)
        if continuations.ndim != 2:
            raise ValueError(f"continuations must be (n, L), got shape {continuations.shape}")
        lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if not len(continuations) == lengths.size == weights.size:
            raise ValueError(
                f"{len(continuations)} continuations, {lengths.size} lengths, {weights.size} weights"
            )
        object.__setattr__(self, "continuations", continuations)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def from_tree(cls, tree: DraftTree) -> "WeightedContinuations":
        """Continuations whose trie is ``tree``, with each node weighing its path probability
        (the product of its ``scores`` along the path, clipped to [0, 1]; 1 when unscored).

        Each node becomes the row of its path, weighing what of its probability its children do
        not carry on, so that the rows through a node add up to the node's probability.
        """
        if len(tree) == 0:
            return replace(cls.empty(), draws=tree.draws)
        conditional = (np.ones(len(tree)) if tree.scores is None
                       else np.clip(tree.scores, 0.0, 1.0))
        probability = path_probabilities(tree, conditional)
        rows = np.full((len(tree), tree.max_depth), -1, dtype=np.int64)
        for node, parent in enumerate(tree.parents.tolist()):
            depth = int(tree.depths[node])
            if parent >= 0:
                rows[node, :depth - 1] = rows[parent, :depth - 1]
            rows[node, depth - 1] = tree.tokens[node]
        carried_on = np.zeros(len(tree))
        np.add.at(carried_on, tree.parents[tree.parents >= 0], probability[tree.parents >= 0])
        residual = np.maximum(probability - carried_on, 0.0)
        # Row i is node i's path: a draw below node i is below the first depth(i) tokens of row i.
        return cls(rows, tree.depths.copy(), residual, tree.match_length, tree.draws)

    @classmethod
    def empty(cls, span: int = 0) -> "WeightedContinuations":
        """No continuation at all."""
        return cls(
            np.zeros((0, span), dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        )

    def __len__(self) -> int:
        return int(self.lengths.size)

    @property
    def span(self) -> int:
        """Width of the padded continuation array."""
        return int(self.continuations.shape[1])

    def normalized(self, total: float = 1.0) -> "WeightedContinuations":
        """The same continuations with weights rescaled to sum to ``total`` (empty stays empty)."""
        weight_sum = float(self.weights.sum())
        if weight_sum <= 0:
            return self
        return WeightedContinuations(self.continuations, self.lengths,
                                     self.weights * (total / weight_sum), self.match_length,
                                     self.draws)

    def scaled(self, factor: float) -> "WeightedContinuations":
        """The same continuations with weights multiplied by ``factor``."""
        return WeightedContinuations(self.continuations, self.lengths, self.weights * factor,
                                     self.match_length, self.draws)

    def padded_to(self, span: int) -> "WeightedContinuations":
        """The same continuations in an array ``span`` wide (longer rows are cut)."""
        if span == self.span:
            return self
        padded = np.full((len(self), span), -1, dtype=np.int64)
        width = min(span, self.span)
        padded[:, :width] = self.continuations[:, :width]
        draws = self.draws
        if draws is not None and span < self.span:  # prefixes cut short lose their draws
            draws = draws.select(draws.depths <= span, draws.anchors)
        return WeightedContinuations(padded, np.minimum(self.lengths, span), self.weights,
                                     self.match_length, draws)

    def to_tree(self, budget: int) -> DraftTree:
        """The ``budget`` heaviest nodes of the trie of these continuations, with the draws
        whose prefix is among them (a draw below the root always stays).

        Which nodes are kept depends on each node's own weight and on the weights of nodes
        outside its subtree, never on what was drawn below it, so the draws stay lossless.
        """
        tree = DraftTree.from_continuations(self.continuations, self.lengths, self.weights, budget,
                                            self.match_length)
        if self.draws is None:
            return tree
        node_of = {path: node for node, path in enumerate(tree.node_paths())} | {(): -1}
        anchors = np.array([node_of.get(path, -2)
                            for path in anchor_paths(self.draws, self.continuations)],
                           dtype=np.int64)
        return tree.with_draws(self.draws.select(anchors >= -1, anchors))


def concatenate(parts: Sequence[WeightedContinuations]) -> WeightedContinuations:
    """All rows of ``parts`` in one set (padded to the widest), matched as long as the longest
    match among them; identical rows stay separate rows, and add up once turned into a tree."""
    if not parts:
        return WeightedContinuations.empty()
    span = max(part.span for part in parts)
    padded = [part.padded_to(span) for part in parts]
    first_rows = np.cumsum([0] + [len(part) for part in padded[:-1]])
    return WeightedContinuations(
        np.concatenate([part.continuations for part in padded]),
        np.concatenate([part.lengths for part in padded]),
        np.concatenate([part.weights for part in padded]),
        max(part.match_length for part in parts),
        concatenate_draws([(part.draws, int(first)) for part, first in zip(padded, first_rows)]),
    )


def context_array(token_ids: Sequence[int], last: int | None = None) -> np.ndarray:
    """The context (or its ``last`` tokens) as an int64 array; accepts lists, arrays, tensors."""
    tail = token_ids if last is None else token_ids[-last:] if last > 0 else token_ids[:0]
    if hasattr(tail, "detach"):  # a torch tensor, possibly on an accelerator
        tail = tail.detach().cpu().numpy()
    return np.asarray(tail, dtype=np.int64).reshape(-1)


class ContinuationDrafter(ABC):
    """A drafter whose proposal is the trie of weighted continuations, cut to ``budget`` nodes.

    Subclasses implement :meth:`continuations`; :class:`CombinedDrafter` merges the
    continuations of several such drafters into one tree.
    """

    def __init__(self, *, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget must be >= 0, got {budget}")
        self.budget = budget

    @abstractmethod
    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Weighted guesses of what follows ``token_ids`` (whole context, pending token last)."""

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """The ``budget`` heaviest nodes of the trie of :meth:`continuations`."""
        return self.continuations(token_ids).to_tree(self.budget)

    def observe(self, feedback: StepFeedback) -> None:
        """Stateless by default: nothing to learn."""

    def reset(self) -> None:
        """Stateless by default: nothing to forget."""


class NoDrafter:
    """Never drafts: the decoding loop degenerates to plain one-token-per-step decoding."""

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """Always the empty tree."""
        return DraftTree.empty()

    def observe(self, feedback: StepFeedback) -> None:
        """Nothing to learn."""

    def reset(self) -> None:
        """Nothing to forget."""

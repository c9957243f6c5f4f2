"""A planner that prices the draft model's own forwards (issue 16).

Retrieval and context drafts cost microseconds; a draft model's cost a forward of the draft model
per token (per level for a tree). :class:`PricedDraftModel` therefore decides each step, by
expected tokens per predicted second, in three stages:

1. **Retrieval first.** The sources' tree (retrieval + context) is planned as the default drafter
   plans it: the best prefix-closed cut, its expected tokens ``1 + S`` and its predicted time.
2. **Whether and how deep the draft model drafts.** A draft of ``d`` levels is expected to
   commit ``1 + max(S, E(d))`` tokens, with ``E(d) = a1 * (1 + a + ... + a^(d-1))``: ``a`` the
   draft's observed per-token acceptance and ``a1 = 1 - (1 - a)^branches`` its first level's.
   It costs the draft's forwards, priced by *its* latency profile (the first forward feeds the
   tokens committed since its last draft), plus the wider verification. ``d = 0`` keeps the
   retrieval tree alone: a cheap long match stands in for the draft model's call. A chain also
   stops early, token by token, when the next draft token's expected gain per second (the
   calibrated probability that the whole chain so far is accepted, times ``a``) falls below the
   rate the step already expects.
3. **The merge.** The draft's tree is merged with the sources' (:func:`merged_tree`, the draft
   weighing ``weight``), and the merged tree is cut by the latency planner with the drafting time
   counted in the step's cost.

What the draft model was worth is learned from what each step commits: how many of its chain's
tokens the target then produced (a geometric count: tokens tested until the first miss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from restdecode.drafting.base import StepFeedback, WeightedContinuations, concatenate
from restdecode.drafting.combined import weighted_paths
from restdecode.drafting.planner import (AcceptanceCalibration, CostModel, best_size,
                                         default_calibration, match_length_group,
                                         node_probabilities, plan_batch)
from restdecode.drafting.tree import DraftTree

if TYPE_CHECKING:
    from restdecode.drafting.base import Drafter
    from restdecode.drafting.draft_model import DraftModelDrafter

# Prior of the draft model's per-token acceptance before any evidence, and its strength (in
# tested tokens). Same-family pairs (Qwen2.5-Coder 0.5B for 1.5B) accept 0.7-0.8 of greedy tokens.
PRIOR_ACCEPTANCE = 0.6
PRIOR_STRENGTH = 8.0


def merged_tree(parts: Sequence[WeightedContinuations], weights: Sequence[float],
                budget: int) -> DraftTree:
    """The ``budget`` heaviest nodes of the trie of ``parts``, each part's weights normalised to
    sum to its weight (as :class:`~restdecode.drafting.CombinedDrafter` merges its sources)."""
    return concatenate([part.normalized(weight)
                        for part, weight in zip(parts, weights)]).to_tree(budget)


class DraftAcceptance:
    """The draft model's per-token acceptance, counted over tested tokens with a prior."""

    def __init__(self, prior: float = PRIOR_ACCEPTANCE, strength: float = PRIOR_STRENGTH) -> None:
        self.prior, self.strength = prior, strength
        self.accepted = 0.0
        self.tested = 0.0

    @property
    def rate(self) -> float:
        """Estimated probability that a draft token is right when its parent is."""
        return (self.accepted + self.strength * self.prior) / (self.tested + self.strength)

    def count(self, chain: Sequence[int], committed: Sequence[int]) -> None:
        """Count one draft ``chain`` against the tokens the step ``committed`` after the same
        context: every token up to the first miss was tested; a chain longer than what was
        committed, all agreeing, has its untested rest skipped."""
        agreed = 0
        for drafted, made in zip(chain, committed):
            if drafted != made:
                break
            agreed += 1
        missed = agreed < min(len(chain), len(committed))
        self.accepted += agreed
        self.tested += agreed + missed


class PricedDraftModel:
    """A draft model merged with cheaper sources, drafting only as deep as it pays.

    * ``draft``: the :class:`~restdecode.drafting.DraftModelDrafter` (its ``k`` is the deepest
      draft a step may ask for);
    * ``sources``: retrieval + context (e.g. :func:`~restdecode.drafting.default_drafter` with a
      fixed budget, a :class:`~restdecode.drafting.base.ContinuationDrafter`);
    * ``profile``: the target's latency profile (verification); ``draft_profile``: the draft
      model's (its forwards), both :class:`~restdecode.drafting.planner.CostModel`;
    * ``budget``: nodes of the merged candidate tree (the draft's nodes come on top);
    * ``weight``: the draft's share in the merged tree against the sources' (weighing 1);
    * ``calibration``: the latency planner's acceptance calibration (by match-length group);
    * ``overhead``: per-step seconds besides the forwards.
    """

    def __init__(self, draft: "DraftModelDrafter", sources: "Drafter", profile: CostModel,
                 draft_profile: CostModel, *, budget: int, weight: float = 1.0,
                 calibration: AcceptanceCalibration | None = None,
                 overhead: float = 0.0) -> None:
        self.draft, self.sources = draft, sources
        self.profile, self.draft_profile = profile, draft_profile
        self.budget, self.weight, self.overhead = budget, weight, overhead
        self.calibration = calibration if calibration is not None else default_calibration()
        self.acceptance = DraftAcceptance()
        self.last_depth = 0  # draft levels the last step drafted (0: retrieval alone)
        self._group = 0
        self._chain: list[int] = []  # the draft's first chain of the last step

    @property
    def drafters(self) -> list["Drafter"]:
        """The draft model's drafter and the sources (for descriptions)."""
        return [self.draft, self.sources]

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """The planned tree: retrieval alone, or merged with a draft as deep as it pays."""
        cache = max(len(token_ids) - 1, 0)
        found = weighted_paths(self.sources, token_ids)
        sources_tree = found.to_tree(self.budget)
        self._group = min(match_length_group(sources_tree), self.calibration.groups - 1)
        probabilities = node_probabilities(sources_tree, self.calibration, self._group)
        plan = self._planned(probabilities, cache)
        fed = self.draft.unfed(token_ids)
        depth = self.draft_depth(plan, cache, fed)
        self.last_depth, self._chain = depth, []
        if depth == 0:
            return plan_batch([(sources_tree, probabilities)], self.profile, cache,
                              overhead=self.overhead)[0]
        keep_going = self._keep_going(plan, cache, fed) if self.draft.branches == 1 else None
        drafted = self.draft.propose(token_ids, depth=depth, keep_going=keep_going)
        if len(drafted) == 0:  # the draft model's context is full
            self.last_depth = 0
            return plan_batch([(sources_tree, probabilities)], self.profile, cache,
                              overhead=self.overhead)[0]
        self.last_depth, self._chain = drafted.max_depth, first_chain(drafted)
        seconds = self.drafting_seconds(drafted.max_depth, cache, fed)
        merged = merged_tree([WeightedContinuations.from_tree(drafted), found],
                             [self.weight, 1.0], self.budget + len(drafted))
        return plan_batch([(merged, node_probabilities(merged, self.calibration, self._group))],
                          self.profile, cache, overhead=self.overhead + seconds)[0]

    def _planned(self, probabilities: np.ndarray, cache: int) -> tuple[float, int]:
        """The sources' planned cut: its expected accepted draft tokens and its node count."""
        ordered = np.sort(probabilities)[::-1]
        size = best_size(ordered, self.profile, cache, self.overhead)
        return float(ordered[:size].sum()), size

    def drafting_seconds(self, levels: int, cache: int, fed: int) -> float:
        """Predicted seconds of ``levels`` draft forwards: the first feeds ``fed`` tokens, a
        chain's next ones one token each, a tree's level l the ``1 + branches * l`` tokens
        drafted so far below the pending one."""
        if levels <= 0:
            return 0.0
        widths = np.array([fed] + [1 if self.draft.branches == 1 else 1 + self.draft.branches * level
                                   for level in range(1, levels)], dtype=np.float64)
        return float(np.sum(self.draft_profile.predict(widths, cache)))

    def expected_draft_tokens(self, levels: int) -> float:
        """E(levels): the draft's expected accepted tokens (module docstring)."""
        rate = self.acceptance.rate
        first = 1.0 - (1.0 - rate) ** self.draft.branches
        return first * float(np.sum(rate ** np.arange(levels)))

    def draft_depth(self, plan: tuple[float, int], cache: int, fed: int) -> int:
        """The draft depth (0..k) with the most expected tokens per predicted second, next to
        the sources' planned cut ``plan`` (expected tokens, nodes); ties go to the shallower."""
        retrieval_sum, retrieval_nodes = plan
        best, best_rate = 0, (1.0 + retrieval_sum) / self._verify_seconds(retrieval_nodes, cache)
        for levels in range(1, self.draft.k + 1):
            nodes = retrieval_nodes + self.draft.branches * levels
            tokens = 1.0 + max(retrieval_sum, self.expected_draft_tokens(levels))
            seconds = (self._verify_seconds(nodes, cache)
                       + self.drafting_seconds(levels, cache, fed))
            if tokens / seconds > best_rate * (1 + 1e-9):
                best, best_rate = levels, tokens / seconds
        return best

    def _verify_seconds(self, nodes: int, cache: int) -> float:
        return float(self.profile.predict(1 + nodes, cache)) + self.overhead

    def _keep_going(self, plan: tuple[float, int], cache: int, fed: int):
        """A chain's early stop: draft one more token only while its expected gain per second
        (chance the chain so far is accepted, times the draft's acceptance) is at least the
        rate the step expects with the chain so far."""
        retrieval_sum, retrieval_nodes = plan
        rate = self.acceptance.rate

        def keep_going(scores: list[float]) -> bool:
            levels = len(scores)
            path = np.cumprod(self.calibration.calibrate(np.asarray(scores), self._group))
            tokens = 1.0 + max(retrieval_sum, float(path.sum()))
            seconds = (self._verify_seconds(retrieval_nodes + levels, cache)
                       + self.drafting_seconds(levels, cache, fed))
            extra = (self._verify_seconds(retrieval_nodes + levels + 1, cache)
                     - self._verify_seconds(retrieval_nodes + levels, cache)
                     + float(self.draft_profile.predict(1, cache)))
            return float(path[-1]) * rate / max(extra, 1e-9) >= tokens / seconds

        return keep_going

    def observe(self, feedback: StepFeedback) -> None:
        """Learn the calibration from the verified tree, the draft's acceptance from what was
        committed; then forward to the sources and the draft model."""
        self.calibration.update(feedback.tree, feedback.accepted_nodes, self._group)
        if self._chain:
            self.acceptance.count(self._chain, list(feedback.committed))
        self.sources.observe(feedback)
        self.draft.observe(feedback)

    def reset(self) -> None:
        """Forward to the sources and the draft model; what was learned is kept."""
        self.sources.reset()
        self.draft.reset()
        self._chain = []


def first_chain(tree: DraftTree) -> list[int]:
    """The tokens along the first child of every node from the root (a greedy draft tree's
    argmax chain: its first branch is the top token, continued by argmax)."""
    chain, parent = [], -1
    for node in range(len(tree)):
        if int(tree.parents[node]) == parent:
            chain.append(int(tree.tokens[node]))
            parent = node
    return chain

"""A planner that prices the draft model's own forwards (issue 16).

Retrieval and context drafts cost microseconds; a draft model's cost a forward of the draft model
per token (per level for a tree). :class:`PricedDraftModel` therefore decides each step, by
expected tokens per predicted second, in three stages:

1. **Retrieval first.** The sources' tree (retrieval + context) is planned as the default drafter
   plans it: the best prefix-closed cut, its expected tokens ``1 + S`` and its predicted time.
2. **Whether and how deep the draft model drafts.** The chance that a draft of ``d`` levels
   gets its first ``i + 1`` tokens accepted is ``a1 * a^i`` (``a`` the draft's observed per-token
   acceptance, ``a1 = 1 - (1 - a)^branches`` its first level's); the sources' cut gets there
   with the chance its kept nodes of that depth sum to. Treated as independent, either gets
   there with ``r + q - r q``, and the step commits one token plus the sum of those chances. It
   costs the draft's forwards, priced by *its* latency profile (scaled by what its calls
   really took against that profile), plus the wider verification.
   ``d = 0`` keeps the retrieval tree alone: a cheap long match stands in for the draft model's
   call. A chain also stops early, token by token, when the next draft token's expected gain
   per second (the calibrated chance the chain so far is accepted, times ``a``, where the
   sources do not already reach that far) falls below the rate the step already expects.
   After ``PROBE_AFTER`` steps in a row without it, one step drafts a token anyway: steps that
   do not draft teach nothing, and an estimate that fell too low could otherwise never recover.
   Each probe that does not bring it back doubles that wait.
3. **The merge.** The draft's tree is merged with the sources' (:func:`merged_tree`, the draft
   weighing ``weight``), and the merged tree is cut by the latency planner, the drafting time
   counted in the step's cost. A merged node's probability is the union of its probability in
   each source (:func:`united`): the sources' path probability under their calibration, the
   draft's under a calibration of its own (by the draft model's q).

The sources' chances are also scaled by how many of their promised nodes they kept
(:attr:`PricedDraftModel.sources_trust`). In batched decoding a row with this drafter rides in the
batch's forward with the tree it planned alone (the batch planner shares width only among
:class:`~restdecode.drafting.PlannedDrafter` rows).

Each source is calibrated apart because their nodes are accepted at very different rates for the
same raw score: one calibration over the merged trees credited the retrieval tree with 2.8 tokens
a step where it committed 1.0 (Qwen2.5-Coder 0.5B for 1.5B, HumanEval), and the draft model was
then skipped where it would have paid. What the draft model was worth is learned from what each
step commits: how many of its chain's tokens the target then produced (tokens tested until the
first miss), with their q.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from restdecode.drafting.base import StepFeedback, WeightedContinuations
from restdecode.drafting.combined import merge_weighted, weighted_paths
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
TRUST_PRIOR = 4.0
# Steps without the draft model after which one step drafts a token anyway, so that an
# acceptance estimate that fell too low can recover.
PROBE_AFTER = 32
# Each probe that does not bring the draft model back doubles the wait before the next, up to
# this: a probe's catch-up feeds every token since the last draft, and on llama.cpp (0.5B Q4 on
# 2 cores) three probes a generation cost 15-25% of its time.
MAX_PROBE_AFTER = 1024
# Prior of the draft's cost scale: this many seconds of drafting, taken as the profile predicts.
COST_PRIOR_S = 0.05


def merged_tree(parts: Sequence[WeightedContinuations], weights: Sequence[float],
                budget: int) -> DraftTree:
    """The ``budget`` heaviest nodes of the trie of ``parts``, merged as
    :class:`~restdecode.drafting.CombinedDrafter` merges its sources (:func:`merge_weighted`)."""
    return merge_weighted(parts, weights).to_tree(budget)


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
    * ``calibration``: the sources' acceptance calibration (by match-length group; the
      engine shares one among its drafters); the draft's own is ``draft_calibration``;
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
        self.draft_calibration = AcceptanceCalibration()
        self.prior_acceptance, self.prior_strength = PRIOR_ACCEPTANCE, PRIOR_STRENGTH
        self.last_depth = 0  # draft levels the last step drafted (0: retrieval alone)
        self.draft_seconds_spent = self.draft_seconds_predicted = 0.0  # of its timed calls
        self._idle = 0  # steps in a row without the draft model
        self._probe_after = PROBE_AFTER  # idle steps before the next probe
        self._group = 0
        self._chain = DraftTree.empty()  # the draft's first chain of the last step
        self._sources_tree = DraftTree.empty()  # the sources' candidate tree of the last step
        self._sources_chances = np.zeros(0)  # its nodes' calibrated chances
        self.sources_accepted = self.sources_expected = 0.0  # over the sources' verified nodes

    @property
    def acceptance_rate(self) -> float:
        """The draft model's per-token acceptance so far (tested tokens, with the prior)."""
        calibration = self.draft_calibration
        return ((calibration.successes.sum() + self.prior_strength * self.prior_acceptance)
                / (calibration.trials.sum() + self.prior_strength))

    @property
    def sources_trust(self) -> float:
        """Accepted sources' nodes per accepted node their calibrated chances promised, over
        every verified sources' node so far (prior: as promised, worth ``TRUST_PRIOR``
        nodes). A node's calibration counts its acceptance given its parent by raw score
        alone, so a deep trie of certain-looking nodes (one occurrence) is promised more than
        it keeps."""
        return float(np.clip((self.sources_accepted + TRUST_PRIOR)
                             / (self.sources_expected + TRUST_PRIOR), 0.05, 2.0))

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
        self._sources_tree = sources_tree
        self._sources_chances = node_probabilities(sources_tree, self.calibration, self._group)
        probabilities = np.minimum(self._sources_chances * self.sources_trust, 1.0)
        reach, kept = self._planned(sources_tree, probabilities, cache)
        nodes = int(kept.sum())
        depth = self.draft_depth(reach, nodes, cache)
        self._idle = self._idle + 1 if depth == 0 else 0
        if depth > 0:
            self._probe_after = PROBE_AFTER
        elif self._idle > self._probe_after:  # no evidence comes from steps that do not draft
            depth, self._idle = 1, 0
            self._probe_after = min(2 * self._probe_after, MAX_PROBE_AFTER)
        drafted = DraftTree.empty()
        if depth > 0:
            keep_going = (self._keep_going(reach, nodes, cache) if self.draft.branches == 1
                          else None)
            prefill = self.draft.session is None  # a one-off per generation: not counted
            started = time.perf_counter()
            drafted = self.draft.propose(token_ids, depth=depth, keep_going=keep_going)
            if not prefill and len(drafted):
                self.draft_seconds_spent += time.perf_counter() - started
                self.draft_seconds_predicted += self.drafting_seconds(drafted.max_depth, cache,
                                                                      as_measured=False)
        self.last_depth, self._chain = drafted.max_depth, first_chain(drafted)
        if len(drafted) == 0:  # retrieval alone (or the draft model's context is full)
            return sources_tree.subset(kept)
        merged = merged_tree([WeightedContinuations.from_tree(drafted), found],
                             [self.weight, 1.0], self.budget + len(drafted))
        chances = united(path_chances(merged, sources_tree, probabilities),
                         path_chances(merged, drafted,
                                      node_probabilities(drafted, self.draft_calibration)))
        seconds = self.drafting_seconds(drafted.max_depth, cache)
        return plan_batch([(merged, chances)], self.profile, cache,
                          overhead=self.overhead + seconds)[0]

    def _planned(self, tree: DraftTree, probabilities: np.ndarray,
                 cache: int) -> tuple[np.ndarray, np.ndarray]:
        """The sources' planned cut, as :func:`plan_batch` makes it for one row: the chance it
        commits at least i + 1 draft tokens (``reach[i]``, the kept nodes' probabilities summed
        by depth) and its mask of kept nodes (prefix-closed)."""
        order = np.lexsort((np.arange(probabilities.size), -probabilities))
        size = best_size(probabilities[order], self.profile, cache, self.overhead)
        kept = np.zeros(probabilities.size, dtype=bool)
        kept[order[:size]] = True
        reach = np.bincount(tree.depths[kept] - 1, weights=probabilities[kept]) if size \
            else np.zeros(0)
        return np.clip(reach, 0.0, 1.0), kept

    def drafting_seconds(self, levels: int, cache: int, *, as_measured: bool = True) -> float:
        """Predicted seconds of ``levels`` draft forwards: a chain's one token each, a tree's
        level l the ``1 + branches * l`` tokens drafted so far below the pending one, by the
        draft's profile, times :attr:`draft_cost_scale` (``as_measured``). The first forward
        also feeds what the context gained since the draft model's last call; the scale
        learns what that adds on average (the prompt's prefill, a one-off, is not counted:
        priced into one step, it kept the draft model idle for good)."""
        if levels <= 0:
            return 0.0
        branches = self.draft.branches
        widths = np.array([1 if branches == 1 or level == 0 else 1 + branches * level
                           for level in range(levels)], dtype=np.float64)
        seconds = float(np.sum(self.draft_profile.predict(widths, cache)))
        return seconds * self.draft_cost_scale if as_measured else seconds

    @property
    def draft_cost_scale(self) -> float:
        """Measured seconds of the draft model's calls per second its profile predicted
        (prior: ``COST_PRIOR_S`` seconds as predicted). It takes in what the profile, timed
        alone, cannot see: the catch-up feeds, and the target and the draft model competing
        for the cores (two llama.cpp contexts on 2 cores drafted 5x slower than profiled)."""
        return float(np.clip((self.draft_seconds_spent + COST_PRIOR_S)
                             / (self.draft_seconds_predicted + COST_PRIOR_S), 0.25, 20.0))

    def draft_reach(self, levels: int) -> np.ndarray:
        """The chance a draft of ``levels`` levels gets its first i + 1 tokens accepted:
        ``a1 * a^i`` (module docstring)."""
        rate = self.acceptance_rate
        first = 1.0 - (1.0 - rate) ** self.draft.branches
        return first * rate ** np.arange(levels)

    def draft_depth(self, reach: np.ndarray, nodes: int, cache: int) -> int:
        """The draft depth (0..k) with the most expected tokens per predicted second, next to
        the sources' planned cut (``reach`` by depth, ``nodes``); ties go to the shallower."""
        best, best_rate = 0, (1.0 + float(reach.sum())) / self._verify_seconds(nodes, cache)
        for levels in range(1, self.draft.k + 1):
            tokens = 1.0 + float(united(reach, self.draft_reach(levels)).sum())
            seconds = (self._verify_seconds(nodes + self.draft.branches * levels, cache)
                       + self.drafting_seconds(levels, cache))
            if tokens / seconds > best_rate * (1 + 1e-9):
                best, best_rate = levels, tokens / seconds
        return best

    def _verify_seconds(self, nodes: int, cache: int) -> float:
        return float(self.profile.predict(1 + nodes, cache)) + self.overhead

    def _keep_going(self, reach: np.ndarray, nodes: int, cache: int):
        """A chain's early stop: draft one more token only while its expected gain per second
        (the chance the chain so far is accepted, times the draft's acceptance, where the
        sources' cut does not already get that far) is at least the rate the step expects with
        the chain so far."""
        rate = self.acceptance_rate
        one_token = float(self.draft_profile.predict(1, cache)) * self.draft_cost_scale

        def keep_going(scores: list[float]) -> bool:
            levels = len(scores)
            path = np.cumprod(self.draft_calibration.calibrate(np.asarray(scores)))
            tokens = 1.0 + float(united(reach, path).sum())
            seconds = (self._verify_seconds(nodes + levels, cache)
                       + self.drafting_seconds(levels, cache))
            gain = float(path[-1]) * rate * (1.0 - (reach[levels] if levels < reach.size else 0))
            extra = (self._verify_seconds(nodes + levels + 1, cache)
                     - self._verify_seconds(nodes + levels, cache) + one_token)
            return gain / max(extra, 1e-9) >= tokens / seconds

        return keep_going

    def observe(self, feedback: StepFeedback) -> None:
        """Learn each source's calibration from its own nodes in the verified tree, the draft's
        acceptance from what was committed; then forward to the sources and the draft model."""
        tested, accepted = verified_nodes(self._sources_tree, feedback)
        self.calibration.update(self._sources_tree.subset(tested), accepted, self._group)
        self.sources_expected += float(self._sources_chances[tested].sum())
        self.sources_accepted += len(accepted)
        if len(self._chain):
            self.draft_calibration.update(*chain_outcome(self._chain, feedback.committed))
        self.sources.observe(feedback)
        self.draft.observe(feedback)

    def reset(self) -> None:
        """Forward to the sources and the draft model; what was learned is kept."""
        self.sources.reset()
        self.draft.reset()
        self._chain = self._sources_tree = DraftTree.empty()
        self._sources_chances = np.zeros(0)
        self.last_depth = self._group = 0


def united(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The chance that either of two independent drafts gets i + 1 tokens accepted, from each
    one's chances by depth (arrays of any lengths)."""
    size = max(first.size, second.size)
    a, b = np.zeros(size), np.zeros(size)
    a[:first.size], b[:second.size] = first, second
    return a + b - a * b


def path_chances(merged: DraftTree, source: DraftTree, chances: np.ndarray) -> np.ndarray:
    """Each node of ``merged`` with the chance its path has in ``source`` (``chances``, by
    ``source``'s nodes); 0 where ``source`` does not propose that path."""
    of_path = dict(zip(source.node_paths(), chances.tolist()))
    return np.array([of_path.get(path, 0.0) for path in merged.node_paths()], dtype=np.float64)


def verified_nodes(source: DraftTree, feedback: StepFeedback) -> tuple[np.ndarray, list[int]]:
    """Which nodes of ``source`` the step verified (their paths are in the verified tree: a
    prefix-closed mask), and which of those (indices among them) were accepted."""
    verified = {path: node for node, path in enumerate(feedback.tree.node_paths())}
    accepted = set(int(node) for node in feedback.accepted_nodes)
    paths = source.node_paths()
    tested = np.array([path in verified for path in paths], dtype=bool)
    kept = [path for path, keep in zip(paths, tested) if keep]
    return tested, [index for index, path in enumerate(kept) if verified[path] in accepted]


def chain_outcome(chain: DraftTree, committed: Sequence[int]) -> tuple[DraftTree, list[int]]:
    """The tokens of a draft ``chain`` the target tested (up to the first miss against what the
    step ``committed``), and which of them it accepted (all but a miss)."""
    agreed = 0
    for drafted, made in zip(chain.tokens.tolist(), committed):
        if drafted != made:
            break
        agreed += 1
    tested = min(agreed + 1, len(chain), len(committed))
    return chain.subset(np.arange(len(chain)) < tested), list(range(agreed))


def first_chain(tree: DraftTree) -> DraftTree:
    """The path along the first child of every node from the root (a greedy draft tree's argmax
    chain: its first branch is the top token, continued by argmax), with its scores."""
    nodes, parent = [], -1
    for node in range(len(tree)):
        if int(tree.parents[node]) == parent:
            nodes.append(node)
            parent = node
    keep = np.zeros(len(tree), dtype=bool)
    keep[nodes] = True
    return tree.subset(keep)

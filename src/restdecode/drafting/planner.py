"""Cost-aware tree sizing: keep the part of a draft tree worth its verification time.

A node is accepted only if its whole path is, so its acceptance probability is the product of the
(calibrated) conditional confidences along its path, and the expected tokens of a step verifying a
node set S are ``1 + sum of those probabilities over S`` (the bonus token is always gained; in
greedy decoding sibling paths exclude each other, so the sum is an expectation, not a bound).
Probabilities never grow along a path, so the k most probable nodes (ties: earlier node first) are
prefix-closed for every k, and among all prefix-closed sets of k nodes they have the largest sum.
:func:`plan_tree` therefore only compares the nested sets "k most probable nodes", k = 0..n, and
keeps the one with the most expected tokens per predicted second; k = 0 is a plain step.

:class:`AcceptanceCalibration` turns raw drafter scores into honest probabilities, learned from
which verified nodes were accepted; :class:`PlannedDrafter` wraps any drafter with both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from restdecode.drafting.base import Drafter, StepFeedback, reads_hidden_states
from restdecode.drafting.tree import DraftTree, path_probabilities

DEFAULT_BUCKET_EDGES: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                           0.999, 1.0)


class CostModel(Protocol):
    """Predicted seconds of one verification forward, e.g.
    :class:`restdecode.latency.LatencyProfile`."""

    def predict(self, width: float | np.ndarray, cache_length: float) -> float | np.ndarray:
        """Seconds for ``width`` tokens (1 + draft nodes) on a cache of ``cache_length``."""
        ...


class AcceptanceCalibration:
    """P(node accepted | its parent accepted) as a function of the node's raw score, learned online.

    Raw scores are binned (``edges``; a score of 1.0 falls in the last bin). Each bin counts trials
    (verified nodes whose parent was accepted) and successes, per *group* of steps (e.g. by how
    long the drafter's suffix match was: a count share from a 12-token match is worth more than
    the same share from a 2-token one). With k = ``prior_strength``, a raw score s in a bin is
    estimated as

    * pooled over groups: ``(successes + k * s) / (trials + k)``: the raw score itself until
      evidence accumulates, the bin's observed rate after many trials;
    * in group g (when there are several): ``(successes_g + k * pooled) / (trials_g + k)``: the
      pooled estimate until the group has its own evidence.

    Counts persist across generations (a run's evidence stays useful); :meth:`clear` forgets them.
    """

    def __init__(self, *, edges: Sequence[float] = DEFAULT_BUCKET_EDGES,
                 prior_strength: float = 8.0, groups: int = 1) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.size < 2 or np.any(np.diff(self.edges) <= 0):
            raise ValueError(f"edges must be at least two increasing values, got {list(edges)}")
        if prior_strength <= 0:
            raise ValueError(f"prior_strength must be > 0, got {prior_strength}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        self.prior_strength = float(prior_strength)
        self.trials = np.zeros((groups, self.edges.size - 1))
        self.successes = np.zeros((groups, self.edges.size - 1))

    @property
    def groups(self) -> int:
        return int(self.trials.shape[0])

    def bucket(self, scores: np.ndarray) -> np.ndarray:
        """Bin index of each raw score (values outside the edges go to the first / last bin)."""
        inner_edges = self.edges[1:-1]
        return np.searchsorted(inner_edges, np.asarray(scores, dtype=np.float64), side="right")

    def calibrate(self, scores: np.ndarray, group: int = 0) -> np.ndarray:
        """Estimated conditional acceptance probability of each raw score, in [0, 1]."""
        raw = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        bins = self.bucket(raw)
        k = self.prior_strength
        pooled = (self.successes.sum(axis=0)[bins] + k * raw) / (self.trials.sum(axis=0)[bins] + k)
        if self.groups == 1:
            return np.clip(pooled, 0.0, 1.0)
        estimate = (self.successes[group, bins] + k * pooled) / (self.trials[group, bins] + k)
        return np.clip(estimate, 0.0, 1.0)

    def update(self, tree: DraftTree, accepted_nodes: Sequence[int], group: int = 0) -> None:
        """Count the outcome of one verified ``tree``: ``accepted_nodes`` are the node indices
        (not slots) on the accepted path. Only nodes whose parent was accepted were really
        tested, so only they count."""
        if len(tree) == 0:
            return
        accepted = np.zeros(len(tree), dtype=bool)
        accepted[np.asarray(list(accepted_nodes), dtype=np.int64)] = True
        parents = tree.parents
        tested = (parents < 0) | accepted[np.maximum(parents, 0)]
        bins = self.bucket(raw_scores(tree)[tested])
        np.add.at(self.trials[group], bins, 1.0)
        np.add.at(self.successes[group], bins, accepted[tested].astype(np.float64))

    def observed_rates(self, group: int | None = None) -> np.ndarray:
        """Observed acceptance rate per bin, pooled or of one group (NaN where none observed)."""
        successes = self.successes.sum(axis=0) if group is None else self.successes[group]
        trials = self.trials.sum(axis=0) if group is None else self.trials[group]
        with np.errstate(invalid="ignore", divide="ignore"):
            return successes / trials

    def clear(self) -> None:
        """Forget all observations."""
        self.trials[:] = 0
        self.successes[:] = 0


# Steps are grouped by the drafter's suffix match length: < 3, 3, 4-5, 6-8, 9-12, >= 13 tokens.
MATCH_LENGTH_EDGES: tuple[int, ...] = (3, 4, 6, 9, 13)


def match_length_group(tree: DraftTree) -> int:
    """The step's group by the suffix match length its tree was drawn from."""
    return int(np.searchsorted(MATCH_LENGTH_EDGES, tree.match_length, side="right"))


def raw_scores(tree: DraftTree) -> np.ndarray:
    """The tree's per-node scores; a drafter that gives none vouches for every node (1.0), and
    calibration learns what that is worth."""
    return tree.scores if tree.scores is not None else np.ones(len(tree))


def plan_tree(
    tree: DraftTree,
    profile: CostModel,
    cache_length: int,
    *,
    calibration: AcceptanceCalibration | None = None,
    overhead: float = 0.0,
    group: int = 0,
) -> DraftTree:
    """The prefix-closed subtree of ``tree`` with the most expected tokens per predicted second.

    ``profile.predict(1 + k, cache_length)`` is the time of verifying k nodes; ``overhead`` is a
    per-step cost added to it (drafting, acceptance). Node probabilities come from ``tree.scores``
    (conditional confidences), through ``calibration`` (its ``group``) when given. Ties between sizes go to the
    smaller tree. The result keeps the original node order (topological, siblings in order) and
    raw scores; an empty tree means a plain step is best.
    """
    if len(tree) == 0:
        return tree
    return plan_batch([(tree, node_probabilities(tree, calibration, group))], profile,
                      cache_length, overhead=overhead)[0]


def node_probabilities(tree: DraftTree, calibration: AcceptanceCalibration | None = None,
                       group: int = 0) -> np.ndarray:
    """Each node's probability of being accepted (its whole path): the tree's conditional
    scores, through ``calibration`` (its ``group``) when given, multiplied along the path."""
    conditional = raw_scores(tree)
    conditional = (calibration.calibrate(conditional, group) if calibration is not None
                   else np.clip(conditional, 0.0, 1.0))
    return path_probabilities(tree, conditional)


def plan_batch(rows: Sequence[tuple[DraftTree, np.ndarray]], profile: CostModel,
               cache_length: int, *, overhead: float = 0.0, fixed_width: int = 0,
               fixed_tokens: float = 0.0) -> list[DraftTree]:
    """The prefix-closed subtree of each row's candidate tree that, verified together in one
    forward, give the most expected tokens per predicted second.

    ``rows`` holds each row's candidate tree and its nodes' acceptance probabilities
    (:func:`node_probabilities`). Every row commits at least its bonus token, so a forward over
    B rows and k kept nodes in all yields B + (the kept probabilities) tokens and costs
    ``profile.predict(B + k, cache_length) + overhead``: the width goes to the nodes most likely
    accepted, whichever row they belong to (a confident row gets a deep tree, the others plain
    steps), and to none when the forward is compute-bound. ``cache_length`` is what the forward
    attends over. Rows planned elsewhere (plain rows, fixed trees) ride in the same forward:
    ``fixed_width`` tokens expected to commit ``fixed_tokens``. Ties go to fewer nodes.
    """
    probabilities = np.concatenate([p for _, p in rows]) if rows else np.zeros(0)
    owner = np.concatenate([np.full(len(tree), row) for row, (tree, _) in enumerate(rows)]
                           ) if rows else np.zeros(0, dtype=int)
    # Path probabilities never grow along a path, so this order keeps parents before children.
    ranking = np.lexsort((np.arange(probabilities.size), -probabilities))
    size = best_size(probabilities[ranking], profile, cache_length, overhead,
                     base_width=len(rows) + fixed_width, base_tokens=len(rows) + fixed_tokens)
    keep = np.zeros(probabilities.size, dtype=bool)
    keep[ranking[:size]] = True
    return [subtree(tree, keep[owner == row]) for row, (tree, _) in enumerate(rows)]


def best_size(sorted_probabilities: np.ndarray, profile: CostModel, cache_length: int,
              overhead: float = 0.0, base_width: int = 1, base_tokens: float | None = None
              ) -> int:
    """The k in 0..n maximising ``(base_tokens + sum of the first k probabilities) /
    (cost(base_width + k) + overhead)``, for probabilities sorted in decreasing order; the
    smallest such k on ties. ``base_width``: the tokens every forward verifies anyway (one
    pending token per row), expected to commit ``base_tokens`` (default: ``base_width``)."""
    base_tokens = base_width if base_tokens is None else base_tokens
    expected_tokens = base_tokens + np.concatenate([[0.0], np.cumsum(sorted_probabilities)])
    widths = np.arange(base_width, base_width + len(sorted_probabilities) + 1)
    seconds = np.asarray(profile.predict(widths, cache_length), dtype=np.float64) + overhead
    rate = expected_tokens / seconds
    # A relative tolerance so that rounding noise never buys extra nodes.
    return int(np.flatnonzero(rate >= rate.max() * (1 - 1e-12))[0])


def subtree(tree: DraftTree, keep: np.ndarray) -> DraftTree:
    """The nodes of ``tree`` where ``keep`` (a prefix-closed mask), renumbered in original order."""
    return tree.subset(keep)


class TreeCostCorrection:
    """What forwards that verify trees really cost, relative to plain ones, against a latency
    profile's predictions: learned online from the forwards a decoder runs.

    A profile is measured on synthetic forwards; a decode loop's own trees can cost more (on a
    batch, rows of unequal length and trees padded to the widest). Each observed forward adds
    its measured / predicted seconds to a running mean, one for forwards with draft nodes and
    one for plain ones (each starting at 1 with ``prior`` pseudo-observations, each ratio
    clipped to [1/2, 2] against a stray slow step). :meth:`corrected` scales a profile's prices
    of forwards wider than a plain step by ``factor`` = tree mean / plain mean: only the ratio
    changes which plan is best.
    """

    def __init__(self, *, prior: float = 8.0, window: float = 64.0) -> None:
        self.prior, self.window = prior, window
        self._means = {True: 1.0, False: 1.0}
        self._counts = {True: prior, False: prior}

    @property
    def factor(self) -> float:
        """How much more (> 1) or less a tree forward costs than its price, relative to a
        plain forward's."""
        return self._means[True] / self._means[False]

    @property
    def plain_ratio(self) -> float:
        """Measured / predicted seconds of plain forwards (1 until observed)."""
        return self._means[False]

    def observe(self, predicted: float, measured: float, *, trees: bool) -> None:
        """Count one forward: its predicted and measured seconds, whether it verified nodes."""
        if predicted <= 0 or measured <= 0:
            return
        ratio = min(max(measured / predicted, 0.5), 2.0)
        count = min(self._counts[trees] + 1, self.window)  # a moving window once it is full
        self._means[trees] += (ratio - self._means[trees]) / count
        self._counts[trees] = count

    def corrected(self, profile: CostModel, base_width: int) -> CostModel:
        """``profile`` with forwards wider than ``base_width`` (the plain step) scaled by
        :attr:`factor`."""
        return _ScaledTrees(profile, base_width, self.factor)


class DraftingGate:
    """Whether drafting still pays for a batch, judged by what the drafted steps realized.

    Drafting costs seconds before the planner can see what they buy: every row's candidate tree
    is looked up, whether or not the plan keeps a node of it (at 16 rows of SmolLM2 on 2 CPU
    cores, about 9 ms of a 150 ms step), and where width is dear even the kept nodes may
    commit less than they cost. After each drafted step, :meth:`record` takes the tokens it
    committed and the whole step's measured seconds against what plain steps would have taken
    for those tokens (:meth:`record_plain` measures those while the gate is closed and in
    checks while it is open, as a ratio to their price: a gate serves several row counts, and
    12 rows' plain step costs more per row than 16 rows'). The mean of that saving is taken
    over about the last
    ``1 / smoothing`` drafted steps (a plain mean until there are that many): one step's saving
    is all or nothing (at 1 row of SmolLM2, +60 ms for a hit, -20 ms for a miss), so a short
    mean dips below zero on a few misses in a row while drafting pays on the whole. Once at
    least ``min_steps`` steps are counted and the mean is negative, the next ``backoff`` steps
    do not draft at all (plain steps), then one step drafts again (a probe): the backoff
    doubles (up to ``max_backoff``) after a probe that lost, halves after a probe that paid,
    and falls to none once the mean turns positive.

    While the gate is open it still takes a plain step now and then (a check), so that the
    plain steps drafted ones are judged against are measured at the machine's present speed:
    on a shared CPU a whole step drifts by 10-25% within seconds, more than drafting saves at
    16 rows, and a ratio measured in a slow spell kept a 16-row gate open for a whole run
    that lost to plain steps. A check costs one step's saving, so checks are spaced by the
    saving's share of a step over ``check_cost`` (at least ``min_steps``, at most 64 drafted
    steps apart): their cost stays under ``check_cost`` of the time, and they come most often
    where drafting barely pays, which is where a stale reference misleads.
    """

    MAX_CHECK_SPACING = 64  # drafted steps between two checks at most

    def __init__(self, *, smoothing: float = 1 / 32, max_backoff: int = 16,
                 min_steps: int = 8, check_cost: float = 1 / 256) -> None:
        if (not 0 < smoothing <= 1 or max_backoff < 1 or min_steps < 1
                or not 0 < check_cost <= 1):
            raise ValueError("need 0 < smoothing <= 1, max_backoff >= 1, min_steps >= 1 and "
                             "0 < check_cost <= 1")
        self.smoothing, self.max_backoff, self.min_steps = smoothing, max_backoff, min_steps
        self.check_cost = check_cost
        self._since_plain = 0  # drafted steps since the last plain one
        self._drafted_seconds: float | None = None  # mean drafted step
        self.saving: float | None = None  # mean, seconds per drafted step
        self.steps = 0  # drafted steps recorded
        self.plain_ratio: float | None = None  # plain steps seen while closed, over their price
        self._plain_steps = 0
        self._backoff = 1
        self._skip = 0

    def should_draft(self) -> bool:
        """Whether this step drafts (a step that does not counts down the backoff, or is a
        check of the plain steps' speed)."""
        if self._skip > 0:
            self._skip -= 1
            self._since_plain = 0
            return False
        if self.steps >= self.min_steps and self._since_plain >= self._check_spacing():
            self._since_plain = 0
            return False
        return True

    def _check_spacing(self) -> int:
        """Drafted steps between two checks while open: each costs a step's saving."""
        share = max(self.saving, 0.0) / self._drafted_seconds if self._drafted_seconds else 0.0
        return int(min(max(share / self.check_cost, self.min_steps), self.MAX_CHECK_SPACING))

    def _moving_mean(self, mean: float | None, value: float, count: int) -> float:
        """``mean`` moved to ``value``: a plain mean of the first ``1 / smoothing`` values, then
        a running mean over about that many."""
        return value if mean is None else mean + max(self.smoothing, 1 / count) * (value - mean)

    def record_plain(self, seconds: float, priced_seconds: float) -> None:
        """One plain step (the gate closed, or a check), whole, and its forward's price: the
        measured over priced ratio (a mean over about the last 1 / smoothing of them) is what
        :meth:`plain_seconds` applies to the price of a drafted step's rows."""
        if priced_seconds <= 0:
            return
        self._plain_steps += 1
        self.plain_ratio = self._moving_mean(self.plain_ratio, seconds / priced_seconds,
                                             self._plain_steps)

    def plain_seconds(self, priced_seconds: float, fallback_ratio: float = 1.0) -> float:
        """What a plain step priced at ``priced_seconds`` takes, whole: the price times the
        ratio measured by :meth:`record_plain`, or ``fallback_ratio`` before any."""
        ratio = self.plain_ratio if self.plain_ratio is not None else fallback_ratio
        return priced_seconds * ratio

    def record(self, tokens: int, rows: int, seconds: float, plain_seconds: float) -> None:
        """One drafted step: ``tokens`` committed by its ``rows`` rows in ``seconds`` (measured,
        the whole step), where a plain step of those rows takes ``plain_seconds``."""
        if rows < 1:
            return
        saving = tokens * plain_seconds / rows - seconds
        self.steps += 1
        self._since_plain += 1
        self.saving = self._moving_mean(self.saving, saving, self.steps)
        self._drafted_seconds = self._moving_mean(self._drafted_seconds, seconds, self.steps)
        if self.saving < 0 and self.steps >= self.min_steps:
            # A probe that paid halves the backoff, one that lost doubles it: once drafting pays
            # again (say the next request's) probes come back within a few steps, but where
            # single steps win and lose by turns while the mean loses (16 rows of SmolLM2 on 2
            # cores), probes stay sparse. Resetting to one step after every probe that paid
            # drafted 55 of 100 such steps, each 9-15% dearer a token than a plain step.
            self._skip = self._backoff
            self._backoff = (max(1, self._backoff // 2) if saving >= 0
                             else min(2 * self._backoff, self.max_backoff))
        elif self.saving >= 0:
            self._backoff = 1


class BatchGates:
    """One :class:`DraftingGate` per number of rows in the step (up to a power of two).

    Whether drafting pays depends on how many rows share the forward (at 16 rows of SmolLM2 on 2
    CPU cores it never does, at 4 it mostly does), so each row count keeps its own verdict: rows
    leaving or joining switch to the verdict of the new count at once, not after a backoff, and
    a count where drafting keeps losing can back off long (``max_backoff``) at little risk. Each
    gate's mean spans about ``row_steps`` row-steps, at least ``min_window`` steps: a step of R
    rows sums R rows' all-or-nothing savings, so fewer of them make as sure a mean (one row
    needs ~32 steps; at 8 or 16 rows a mean over 8 steps closed the gate as soon as drafting
    lost, which a mean over 32 did too slowly). Keep one across decoders (as a server keeps its
    decoder) and the verdicts carry over.
    """

    def __init__(self, *, row_steps: int = 32, min_window: int = 8, max_backoff: int = 64,
                 min_steps: int = 8) -> None:
        if row_steps < 1 or min_window < 1:
            raise ValueError("need row_steps >= 1 and min_window >= 1")
        self.row_steps, self.min_window = row_steps, min_window
        self._settings = dict(max_backoff=max_backoff, min_steps=min_steps)
        DraftingGate(**self._settings)  # checks the arguments
        self._gates: dict[int, DraftingGate] = {}

    def for_rows(self, rows: int) -> DraftingGate:
        """The gate of steps with ``rows`` rows, shared by the counts up to the same power of
        two (9 to 16 rows: one gate), as the batch profile measures 1, 2, 4, 8 and 16 rows: as
        rows finish one by one, a gate per count would spend ``min_steps`` drafted steps
        finding out at each count what its neighbour already knew."""
        bucket = 1 << max(rows - 1, 0).bit_length()
        if bucket not in self._gates:
            window = max(self.row_steps / bucket, self.min_window)
            self._gates[bucket] = DraftingGate(smoothing=min(1.0, 1 / window), **self._settings)
        return self._gates[bucket]

    def should_draft(self, rows: int) -> bool:
        """Whether a step of ``rows`` rows drafts."""
        return self.for_rows(rows).should_draft()

    def record(self, tokens: int, rows: int, seconds: float, plain_seconds: float) -> None:
        """A drafted step of ``rows`` rows, as :meth:`DraftingGate.record`."""
        self.for_rows(rows).record(tokens, rows, seconds, plain_seconds)


class _ScaledTrees:
    def __init__(self, profile: CostModel, base_width: int, factor: float) -> None:
        self.profile, self.base_width, self.factor = profile, base_width, factor

    def predict(self, width, cache_length):
        seconds = np.asarray(self.profile.predict(width, cache_length), dtype=np.float64)
        scaled = np.where(np.asarray(width) > self.base_width, seconds * self.factor, seconds)
        return float(scaled) if np.ndim(scaled) == 0 else scaled


def default_calibration() -> AcceptanceCalibration:
    """An empty calibration grouped by suffix match length (:func:`match_length_group`).

    Share one among the drafters of one model (e.g. one per request in a server): what it learns
    about this model's acceptance is worth keeping across requests, and it holds counts only.
    """
    return AcceptanceCalibration(groups=len(MATCH_LENGTH_EDGES) + 1)


class PlannedDrafter:
    """A drafter whose proposals are cut by :func:`plan_tree` to what is worth verifying.

    Give the inner drafter a generous budget (e.g. 32 nodes): the planner decides how much of it
    to verify. Each step's feedback (the verified tree and its accepted nodes) feeds the
    calibration, per group of steps by the suffix match length the inner drafter's tree was
    drawn from (:func:`match_length_group`); ``observe`` and ``reset`` also go to the inner
    drafter (calibration counts persist across generations).
    """

    def __init__(self, drafter: Drafter, profile: CostModel, *,
                 calibration: AcceptanceCalibration | None = None, overhead: float = 0.0) -> None:
        self.drafter = drafter
        self.profile = profile
        self.calibration = calibration if calibration is not None else default_calibration()
        self.overhead = overhead
        self._group = 0  # of the last proposal, for the observation that follows it

    @property
    def reads_hidden_states(self) -> bool:
        """Whether the inner drafter drafts from the model's hidden state."""
        return reads_hidden_states(self.drafter)

    def propose(self, token_ids: Sequence[int]) -> DraftTree:
        """The inner drafter's tree, planned against a cache of ``len(token_ids) - 1`` positions
        (the context without the pending token)."""
        return plan_batch([self.candidate(token_ids)], self.profile,
                          max(len(token_ids) - 1, 0), overhead=self.overhead)[0]

    def candidate(self, token_ids: Sequence[int]) -> tuple[DraftTree, np.ndarray]:
        """The inner drafter's whole tree and its nodes' calibrated acceptance probabilities,
        for a caller that plans several rows at once (:func:`plan_batch`); ``observe`` then
        learns from what was verified as after ``propose``."""
        tree = self.drafter.propose(token_ids)
        self._group = min(match_length_group(tree), self.calibration.groups - 1)
        return tree, node_probabilities(tree, self.calibration, self._group)

    def observe(self, feedback: StepFeedback) -> None:
        """Learn from the verified tree (as verified, after any cut by the loop) and its
        accepted path; then forward to the inner drafter."""
        self.calibration.update(feedback.tree, feedback.accepted_nodes, self._group)
        self.drafter.observe(feedback)

    def reset(self) -> None:
        """Forward to the inner drafter; the calibration keeps its evidence."""
        self.drafter.reset()

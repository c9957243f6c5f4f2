"""Draft quality node for node: tokens per forward against mean draft nodes per step.

Replays a bench run's recorded hf-greedy outputs (no model forward: restdecode.benchmark.replay)
through planned drafters whose per-node verification cost is swept, so that each configuration
traces a curve of (mean nodes verified per step, tokens committed per forward); the table then
reads every curve at the same draft sizes (linear interpolation), which is how drafters compare
when verification has a price. Drafters are kept across prompts, in the run's order, so memories
and calibrations carry over as in a served model.

    .venv/bin/python bench/draft_quality.py bench/results/<run>/results.json.gz \
        --datastore FILE [--configs default,memory,...] [--costs ...] [--sizes 2,4,8,16] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numba
import numpy as np

DEFAULT_COSTS = "0.004,0.01,0.02,0.04,0.08,0.15,0.3,0.6"


class LinearCost:
    """A verification costing 1 + ``per_node`` x nodes (plain step = 1)."""

    def __init__(self, per_node: float) -> None:
        self.per_node = per_node

    def predict(self, widths, cache_length):
        return 1.0 + self.per_node * (np.asarray(widths, dtype=np.float64) - 1)


def planned(datastore, cost, *, memory: bool = False, weights=None, match_power: float = 0.0,
            retrieval: bool = True, context_options: dict | None = None):
    """The default drafter's shape (retrieval + context or memory, 48 candidates, planned), with
    the merge's source weights and match-length power as given."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, PlannedDrafter,
                                     RetrievalDrafter, default_memory)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    from restdecode.drafting import MemoryDrafter

    options = {"span": CONTEXT_SPAN} | (context_options or {})
    context = MemoryDrafter(**options) if memory else ContextDrafter(**options)
    sources = [RetrievalDrafter(datastore), context] if retrieval else [context]
    for source in sources:
        source.budget = CANDIDATE_BUDGET
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=weights,
                             match_power=match_power)
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


class MaxMergeDrafter:
    """Experimental merge: a path weighs the *largest* of its sources' path probabilities (times
    the source's weight), not their normalised sum, so a source sure of a path keeps its
    confidence whatever the other sources propose."""

    def __init__(self, sources, *, budget: int, weights=None):
        self.sources = list(sources)
        self.budget = budget
        self.weights = weights or [1.0] * len(self.sources)

    def propose(self, token_ids):
        from restdecode.drafting import DraftTree

        weight: dict[tuple, float] = {}
        order: dict[tuple, int] = {}
        match_length = 0
        for source, source_weight in zip(self.sources, self.weights):
            tree = source.propose(token_ids)
            match_length = max(match_length, tree.match_length)
            probability = np.empty(len(tree))
            keys: list[tuple] = []
            scores = tree.scores if tree.scores is not None else np.ones(len(tree))
            for node, parent in enumerate(tree.parents.tolist()):
                above = probability[parent] if parent >= 0 else 1.0
                probability[node] = above * min(max(float(scores[node]), 0.0), 1.0)
                key = (keys[parent] if parent >= 0 else ()) + (int(tree.tokens[node]),)
                keys.append(key)
                value = source_weight * probability[node]
                if value > weight.get(key, -1.0):
                    weight[key] = value
                order.setdefault(key, len(order))
        ranked = sorted(weight, key=lambda k: (-weight[k], len(k), order[k]))[: self.budget]
        kept = set(ranked)
        ranked = [k for k in ranked if all(k[:d] in kept for d in range(1, len(k)))]
        index = {key: i for i, key in enumerate(ranked)}
        parents = [index[k[:-1]] if len(k) > 1 else -1 for k in ranked]
        scores = [weight[k] / (weight[k[:-1]] if len(k) > 1 else 1.0) for k in ranked]
        return DraftTree(np.array([k[-1] for k in ranked], dtype=np.int64),
                         np.array(parents, dtype=np.int64), np.array(scores), match_length)

    def observe(self, feedback):
        for source in self.sources:
            source.observe(feedback)

    def reset(self):
        for source in self.sources:
            source.reset()


class DepthCap:
    """Experimental: drafts cut to ``factor`` x match length + ``offset`` deep (SuffixDecoding)."""

    def __init__(self, drafter, factor: float, offset: int = 0):
        self.drafter, self.factor, self.offset = drafter, factor, offset

    def propose(self, token_ids):
        tree = self.drafter.propose(token_ids)
        return tree.subset(tree.depths <= self.factor * tree.match_length + self.offset)

    def observe(self, feedback):
        self.drafter.observe(feedback)

    def reset(self):
        self.drafter.reset()


def capped(datastore, cost, *, factor: float, offset: int = 0, weights=(1, 3)):
    from restdecode.drafting import (CombinedDrafter, MemoryDrafter, PlannedDrafter,
                                     RetrievalDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET),
               MemoryDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET)]
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=list(weights))
    return PlannedDrafter(DepthCap(merged, factor, offset), cost, overhead=STEP_OVERHEAD_S)


def max_merged(datastore, cost, *, weights=None):
    from restdecode.drafting import MemoryDrafter, PlannedDrafter, RetrievalDrafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET),
               MemoryDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET)]
    return PlannedDrafter(MaxMergeDrafter(sources, budget=CANDIDATE_BUDGET, weights=weights),
                          cost, overhead=STEP_OVERHEAD_S)


def node_grouped_calibration(groups: int):
    """An acceptance calibration whose group may differ from node to node (an array of groups,
    one per node, or one group for the whole tree)."""
    from restdecode.drafting.planner import AcceptanceCalibration, raw_scores

    class NodeGroupedCalibration(AcceptanceCalibration):
        def update(self, tree, accepted_nodes, group=0):
            if len(tree) == 0:
                return
            accepted = np.zeros(len(tree), dtype=bool)
            accepted[np.asarray(list(accepted_nodes), dtype=np.int64)] = True
            tested = (tree.parents < 0) | accepted[np.maximum(tree.parents, 0)]
            bins = self.bucket(raw_scores(tree)[tested])
            groups = np.broadcast_to(group, (len(tree),))[tested]
            np.add.at(self.trials, (groups, bins), 1.0)
            np.add.at(self.successes, (groups, bins), accepted[tested].astype(np.float64))

    return NodeGroupedCalibration(groups=groups)


def depth_grouped(datastore, cost, *, depths: int = 4):
    """Experimental: the planner's calibration also grouped by node depth (1, 2, ..., >= depths)
    within each match-length group."""
    from restdecode.drafting import PlannedDrafter
    from restdecode.drafting.planner import MATCH_LENGTH_EDGES, match_length_group, plan_tree

    class DepthGroupedPlanner(PlannedDrafter):
        def _groups(self, tree):
            return self._match_group * depths + np.minimum(tree.depths - 1, depths - 1)

        def propose(self, token_ids):
            candidate = self.drafter.propose(token_ids)
            self._match_group = match_length_group(candidate)
            return plan_tree(candidate, self.profile, max(len(token_ids) - 1, 0),
                             calibration=self.calibration, overhead=self.overhead,
                             group=self._groups(candidate))

        def observe(self, feedback):
            if len(feedback.tree):
                self.calibration.update(feedback.tree, feedback.accepted_nodes,
                                        self._groups(feedback.tree))
            self.drafter.observe(feedback)

    inner = planned(datastore, cost, memory=True, weights=[1, 3]).drafter
    calibration = node_grouped_calibration((len(MATCH_LENGTH_EDGES) + 1) * depths)
    return DepthGroupedPlanner(inner, cost, calibration=calibration)


class LongRunPlanner:
    """Experimental planning: keep the nodes worth their price at the *run's* rate, not the step's.

    Per step the planner maximises that step's expected tokens per second, so a confident step
    (high rate) keeps only very likely nodes and a hopeless one keeps unlikely ones. Time per
    token over a whole generation is E[cost] / E[tokens]; its optimum (Dinkelbach) keeps, in every
    step, the nodes whose probability exceeds R x their marginal cost, R the long-run rate
    (tokens per predicted second), estimated here from the steps so far (prior: ``prior_rate``
    over ``prior_steps`` plain steps)."""

    def __init__(self, planned, *, prior_rate: float = 1.0, prior_steps: float = 8.0,
                 decay: float = 1.0):
        self.planned = planned
        self.tokens = prior_rate * prior_steps
        self.seconds = prior_steps
        self.decay = decay

    def rate(self) -> float:
        return self.tokens / self.seconds

    def propose(self, token_ids):
        from restdecode.drafting.planner import subtree

        tree, probabilities = self.planned.candidate(token_ids)
        if len(tree) == 0:
            return tree
        cache = max(len(token_ids) - 1, 0)
        ranking = np.lexsort((np.arange(probabilities.size), -probabilities))
        gained = np.concatenate([[0.0], np.cumsum(probabilities[ranking])])
        widths = np.arange(1, len(tree) + 2)
        seconds = (np.asarray(self.planned.profile.predict(widths, cache), dtype=np.float64)
                   + self.planned.overhead)
        value = gained - self.rate() * seconds
        size = int(np.flatnonzero(value >= value.max() - 1e-12)[0])
        keep = np.zeros(len(tree), dtype=bool)
        keep[ranking[:size]] = True
        return subtree(tree, keep)

    def observe(self, feedback):
        width = 1 + len(feedback.tree)
        seconds = float(np.asarray(self.planned.profile.predict(np.array([width]), 0))[0]
                        + self.planned.overhead)
        self.tokens = self.decay * self.tokens + len(feedback.committed)
        self.seconds = self.decay * self.seconds + seconds
        self.planned.observe(feedback)

    def reset(self):
        self.planned.reset()


def long_run(datastore, cost, **options):
    from restdecode.drafting import default_drafter, default_memory

    return LongRunPlanner(default_drafter(datastore, profile=cost, memory=default_memory()),
                          **options)


def backoff_memory_class():
    from restdecode.drafting import MemoryDrafter
    from restdecode.drafting.base import WeightedContinuations
    from restdecode.drafting.memory import _cut_at_separators

    class BackoffMemory(MemoryDrafter):
        """Experimental: the continuations of *every* occurrence of the context's last
        ``min_suffix`` tokens, an occurrence matching m tokens of the suffix weighing
        ``decay ** (longest - m)`` (the longest match weighs 1), not only the longest match's."""

        def __init__(self, *, decay: float = 0.5, level_normalised: bool = False, **options):
            self.decay = decay
            self.level_normalised = level_normalised
            super().__init__(**options)

        def continuations(self, token_ids):
            self._sync(token_ids)
            length = self._length
            self.last_match_length = 0
            if length <= self.min_suffix:
                return WeightedContinuations.empty(self.span)
            key = tuple(self._tokens[length - self.min_suffix:length].tolist())
            ends = np.asarray(self._ends.get(key, ()), dtype=np.int64)
            ends = ends[ends < length]
            if ends.size == 0:
                return WeightedContinuations.empty(self.span)
            matched = self._backward_match_lengths(ends)
            best = int(matched.max())
            self.last_match_length = best
            if ends.size > self.max_matches:  # the longest matches, then the most recent
                keep = np.lexsort((ends, matched))[-self.max_matches:]
                keep.sort()
                ends, matched = ends[keep], matched[keep]
            found = self._continuations_after(ends, best)
            weights = found.weights * self.decay ** (best - matched)
            if self.level_normalised:  # every match length weighs decay^(best - m) in all
                levels, inverse, counts = np.unique(matched, return_inverse=True,
                                                    return_counts=True)
                weights = weights / counts[inverse]
            return _cut_at_separators(WeightedContinuations(
                found.continuations, found.lengths, weights, best))

    return BackoffMemory


def backoff(datastore, cost, **options):
    from restdecode.drafting import CombinedDrafter, PlannedDrafter, RetrievalDrafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    memory = backoff_memory_class()(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, **options)
    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET), memory]
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=[1, 3])
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


def learned_mixture_class():
    from restdecode.drafting import CombinedDrafter
    from restdecode.drafting.base import concatenate
    from restdecode.drafting.combined import weighted_paths

    class LearnedMixture(CombinedDrafter):
        """Experimental merge: each source weighs how much probability it has put, so far, on
        the token that came next, by the length of the suffix it matched (groups ``edges``),
        instead of a fixed weight (the fixed weights are the prior, over ``prior_strength``
        steps)."""

        def __init__(self, drafters, *, budget, weights, edges=(2, 3, 4, 6, 9, 13),
                     prior_strength: float = 4.0, depth: int = 1):
            super().__init__(drafters, budget=budget, weights=weights)
            self.edges = np.asarray(edges)
            self.prior = np.asarray(self.weights) / max(self.weights) * 0.5
            self.hits = np.zeros((len(self.drafters), len(edges) + 1))
            self.trials = np.zeros_like(self.hits)
            self.prior_strength = prior_strength
            self.depth = depth
            self._last = None

        def group(self, match_length):
            return int(np.searchsorted(self.edges, match_length, side="right"))

        def quality(self, source, match_length):
            g = self.group(match_length)
            k = self.prior_strength
            return (self.hits[source, g] + k * self.prior[source]) / (self.trials[source, g] + k)

        def continuations(self, token_ids):
            found = [weighted_paths(drafter, token_ids) for drafter in self.drafters]
            self._last = found
            return concatenate([paths.normalized(self.quality(s, paths.match_length))
                                for s, paths in enumerate(found)])

        def observe(self, feedback):
            committed = [int(t) for t in feedback.committed][: self.depth]
            if self._last is not None and committed:
                for s, paths in enumerate(self._last):
                    total = paths.weights.sum()
                    if len(paths) == 0 or total <= 0:
                        continue
                    width = min(len(committed), paths.span)
                    agree = np.all(paths.continuations[:, :width] == np.asarray(committed[:width]),
                                   axis=1)
                    g = self.group(paths.match_length)
                    self.hits[s, g] += paths.weights[agree].sum() / total
                    self.trials[s, g] += 1
            self._last = None
            super().observe(feedback)

    return LearnedMixture


def mixture(datastore, cost, *, context_options=None, **options):
    from restdecode.drafting import MemoryDrafter, PlannedDrafter, RetrievalDrafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    memory = MemoryDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, **(context_options or {}))
    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET), memory]
    merged = learned_mixture_class()(sources, budget=CANDIDATE_BUDGET, weights=[1, 3], **options)
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


def support_grouped(datastore, cost, *, edges=(2, 4, 10), min_suffix: int = 2):
    """Experimental: the planner's calibration also grouped by the memory match's support (how
    many occurrences of the matched suffix the memory holds: 0, 1, 2-3, 4-9, >= 10) within each
    match-length group."""
    from restdecode.drafting import (CombinedDrafter, MemoryDrafter, PlannedDrafter,
                                     RetrievalDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S
    from restdecode.drafting.planner import (MATCH_LENGTH_EDGES, AcceptanceCalibration,
                                             match_length_group, node_probabilities)

    class CountingMemory(MemoryDrafter):
        occurrences = 0

        def _longest_match_occurrences(self):
            ends, length = super()._longest_match_occurrences()
            self.occurrences = int(ends.size)
            return ends, length

    buckets = len(edges) + 2
    memory = CountingMemory(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, min_suffix=min_suffix)
    merged = CombinedDrafter([RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET), memory],
                             budget=CANDIDATE_BUDGET, weights=[1, 3])

    class SupportPlanner(PlannedDrafter):
        def candidate(self, token_ids):
            tree = self.drafter.propose(token_ids)
            support = 0 if memory.occurrences == 0 else 1 + int(
                np.searchsorted(edges, memory.occurrences, side="right"))
            self._group = match_length_group(tree) * buckets + support
            return tree, node_probabilities(tree, self.calibration, self._group)

    calibration = AcceptanceCalibration(groups=(len(MATCH_LENGTH_EDGES) + 1) * buckets)
    return SupportPlanner(merged, cost, calibration=calibration, overhead=STEP_OVERHEAD_S)


@numba.njit(cache=True)
def _length_scores(rows, lengths, matched, lcp, candidates, budgets, self_count, min_prob):
    """SuffixDecoding's score of the draft each match length would give: for each candidate
    length m, the occurrences matching at least m tokens form a trie of their continuations
    (``rows`` in lexicographic order, ``lcp[i]`` the common prefix of rows i - 1 and i), a node's
    probability is its count over (occurrences + ``self_count``), and the score is the sum of the
    ``budgets[c]`` most probable nodes' probabilities (those >= ``min_prob``): the expected
    accepted tokens of the best-first tree of that many nodes."""
    n, depth = rows.shape
    scores = np.zeros(candidates.size)
    emitted_counts = np.empty(n * depth + 1, dtype=np.int64)
    current = np.zeros(depth, dtype=np.int64)
    for c in range(candidates.size):
        m = candidates[c]
        total = 0
        for i in range(n):
            if matched[i] >= m:
                total += 1
        if total == 0:
            continue
        emitted = 0
        current[:] = 0
        shared = depth
        started = False
        for i in range(n):
            if i > 0 and lcp[i] < shared:
                shared = lcp[i]
            if matched[i] < m:
                continue
            if started:
                for d in range(shared, depth):
                    if current[d] > 0:
                        emitted_counts[emitted] = current[d]
                        emitted += 1
                        current[d] = 0
            for d in range(min(lengths[i], depth)):
                current[d] += 1
            started = True
            shared = depth
        for d in range(depth):
            if current[d] > 0:
                emitted_counts[emitted] = current[d]
                emitted += 1
        counts = np.sort(emitted_counts[:emitted])[::-1]
        denominator = total + self_count
        score = 0.0
        for j in range(min(budgets[c], emitted)):
            probability = counts[j] / denominator
            if probability < min_prob:
                break
            score += probability
        scores[c] = score
    return scores


def length_scores_naive(rows, lengths, matched, candidates, budgets, self_count=1, min_prob=0.0):
    """Brute-force oracle of :func:`_length_scores` (tests): counts every prefix in a dict."""
    scores = []
    for m, budget in zip(candidates, budgets):
        chosen = [i for i in range(len(rows)) if matched[i] >= m]
        if not chosen:
            scores.append(0.0)
            continue
        counts: dict[tuple, int] = {}
        for i in chosen:
            for d in range(1, min(int(lengths[i]), rows.shape[1]) + 1):
                prefix = tuple(int(t) for t in rows[i, :d])
                counts[prefix] = counts.get(prefix, 0) + 1
        probabilities = sorted((c / (len(chosen) + self_count) for c in counts.values()),
                               reverse=True)
        scores.append(float(sum(p for p in probabilities[:budget] if p >= min_prob)))
    return np.array(scores)


def scored_source_class(base):
    """``base`` (ContextDrafter or MemoryDrafter) drafting from the match length whose draft
    SuffixDecoding would score best, instead of always the longest repeated suffix."""
    from restdecode.drafting.base import WeightedContinuations
    from restdecode.drafting.memory import SEPARATOR

    class Scored(base):
        """Every occurrence of the last ``min_suffix`` tokens matches the context's suffix over
        some length; for each length m the occurrences matching >= m tokens would give a tree of
        at most min(``cap``, ``factor`` x m + ``offset``) nodes, scored as SuffixDecoding does
        (sum of count-ratio path probabilities, the context's own occurrence counted when
        ``self_count`` is 1). ``pool`` False: the best-scoring length's occurrences draft (ties:
        the longer); True: the longest length's and the best-scoring shorter one's, each set
        weighing its score. ``split``: the current context's occurrences and the memory's are
        scored apart and the better one drafts (SuffixDecoding's prompt tree vs global tree)."""

        def __init__(self, *, factor=1.0, offset=0.0, cap=24, self_count=1, min_prob=0.0,
                     pool=False, split=False, **options):
            self.factor, self.offset, self.cap = factor, offset, cap
            self.self_count, self.min_prob = self_count, min_prob
            self.pool, self.split = pool, split
            super().__init__(**options)

        def continuations(self, token_ids):
            self._sync(token_ids)
            length = self._length
            self.last_match_length = 0
            empty = WeightedContinuations.empty(self.span)
            if length <= self.min_suffix:
                return empty
            key = tuple(self._tokens[length - self.min_suffix:length].tolist())
            ends = np.asarray(self._ends.get(key, ()), dtype=np.int64)
            ends = ends[ends < length]
            if ends.size == 0:
                return empty
            matched = self._backward_match_lengths(ends)
            if ends.size > self.max_matches:  # the longest matches, then the most recent
                keep = np.sort(np.lexsort((ends, matched))[-self.max_matches:])
                ends, matched = ends[keep], matched[keep]
            found = self._continuations_after(ends, 0)
            rows = found.continuations.copy()
            separator = rows == SEPARATOR
            lengths = np.where(separator.any(axis=1), separator.argmax(axis=1), found.lengths)
            rows[np.arange(rows.shape[1])[None, :] >= lengths[:, None]] = -1
            if self.split and self._context_start > 0:
                parts = [ends < self._context_start, ends >= self._context_start]
            else:
                parts = [np.ones(ends.size, dtype=bool)]
            best = None
            for part in parts:
                if not part.any():
                    continue
                chosen = self._choose(rows[part], lengths[part], matched[part])
                if best is None or chosen[0] > best[0]:
                    best = chosen[:1] + (part,) + chosen[1:]
            score, part, selections = best
            weights = np.zeros(ends.size)
            index = np.flatnonzero(part)
            for mask, set_weight in selections:
                weights[index[mask]] += set_weight / mask.sum()
            weights *= found.weights  # the recency tie-break
            keep = (weights > 0) & (lengths > 0)
            match_length = max(int(matched[index[mask]].min()) for mask, _ in selections)
            self.last_match_length = match_length
            return WeightedContinuations(rows[keep], lengths[keep], weights[keep], match_length)

        def _choose(self, rows, lengths, matched):
            """(best score, [(occurrence mask, set weight), ...]) for one group of occurrences."""
            candidates = np.unique(matched[matched >= self.min_suffix])
            if candidates.size == 0:
                candidates = np.array([int(matched.max())])
            budgets = np.maximum(1, np.minimum(
                self.cap, np.floor(self.factor * candidates + self.offset + 1e-6))).astype(np.int64)
            depth = int(min(rows.shape[1], budgets.max()))
            cut = rows[:, :depth]
            order = np.lexsort(cut.T[::-1])
            cut = cut[order]
            same = cut[1:] == cut[:-1]
            lcp = np.zeros(len(cut), dtype=np.int64)
            if len(cut) > 1:
                lcp[1:] = np.where(same.all(axis=1), depth, same.argmin(axis=1))
            scores = _length_scores(cut, lengths[order], matched[order], lcp, candidates,
                                    budgets, self.self_count, self.min_prob)
            best = int(np.flatnonzero(scores >= scores.max())[-1])  # ties: the longer match
            longest = candidates.size - 1
            selections = [(matched >= candidates[best], max(scores[best], 1e-9))]
            if self.pool and longest > 0:
                if best == longest:
                    other = int(np.flatnonzero(scores[:longest] >= scores[:longest].max())[-1])
                else:
                    other = longest
                selections.append((matched >= candidates[other], max(scores[other], 1e-9)))
            return float(scores[best]), selections

    Scored.__name__ = f"Scored{base.__name__}"
    return Scored


def scored(datastore, cost, *, memory: bool = True, min_suffix: int = 1, weights=(1, 3),
           **options):
    """Retrieval + a scored context or memory source (:func:`scored_source_class`), planned."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, MemoryDrafter,
                                     PlannedDrafter, RetrievalDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    source = scored_source_class(MemoryDrafter if memory else ContextDrafter)(
        span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, min_suffix=min_suffix, **options)
    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET), source]
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=list(weights))
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


# Memory / context match lengths 0, 1, 2, 3, 4-5, 6-8, 9-12, >= 13; datastore 0-2, 3-4, >= 5.
SOURCE_MEMORY_EDGES = (1, 2, 3, 4, 6, 9, 13)
SOURCE_DATASTORE_EDGES = (3, 5)


def node_sources(tree, found) -> np.ndarray:
    """For each node of ``tree``: 1 if its path starts a row of ``found[0]`` only, 2 if of
    ``found[1]`` only, 3 if of both (0: neither)."""
    from restdecode.drafting.base import WeightedContinuations

    presence = np.zeros(len(tree), dtype=np.int64)
    if len(tree) == 0:
        return presence
    paths = WeightedContinuations.from_tree(tree).continuations  # row i: node i's path
    for bit, part in ((1, found[0]), (2, found[1])):
        if len(part) == 0:
            continue
        rows, lengths = part.continuations, part.lengths
        width = min(rows.shape[1], paths.shape[1])
        for node in range(len(tree)):
            depth = int(tree.depths[node])
            if depth > width:
                continue
            hit = (lengths >= depth) & (rows[:, :depth] == paths[node, :depth]).all(axis=1)
            if hit.any():
                presence[node] |= bit
    return presence


def source_grouped(datastore, cost, *, by_datastore: bool = True, memory: bool = True,
                   scored_options: dict | None = None, min_suffix: int = 1, depths: int = 1,
                   by_presence: bool = False, edges=None):
    """Experimental: the planner's calibration grouped by the context / memory source's own
    match length (and the datastore's), not by the merged tree's (the longer of the two, most
    often the datastore's), so that a node drawn after a 1-token memory match and one drawn
    after a 12-token one are not calibrated together."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, MemoryDrafter,
                                     PlannedDrafter, RetrievalDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S
    from restdecode.drafting.base import concatenate
    from restdecode.drafting.planner import node_probabilities

    base = MemoryDrafter if memory else ContextDrafter
    if scored_options is not None:
        source = scored_source_class(base)(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET,
                                           min_suffix=min_suffix, **scored_options)
    else:
        source = base(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, min_suffix=min_suffix)
    retrieval = RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET)
    class RecordingCombined(CombinedDrafter):
        found = None

        def continuations(self, token_ids):
            from restdecode.drafting.combined import weighted_paths
            self.found = [weighted_paths(drafter, token_ids) for drafter in self.drafters]
            return concatenate([paths.normalized(weight)
                                for paths, weight in zip(self.found, self.weights)])

    merged = RecordingCombined([retrieval, source], budget=CANDIDATE_BUDGET, weights=[1, 3])
    datastore_groups = len(SOURCE_DATASTORE_EDGES) + 1 if by_datastore else 1
    edges = SOURCE_MEMORY_EDGES if edges is None else edges
    if by_presence:
        depths = 3  # node groups: 0 datastore only (or neither), 1 memory only, 2 both

    class SourceGroupedPlanner(PlannedDrafter):
        def candidate(self, token_ids):
            tree = self.drafter.propose(token_ids)
            group = int(np.searchsorted(edges, source.last_match_length, side="right"))
            if by_datastore:
                group = group * datastore_groups + int(np.searchsorted(
                    SOURCE_DATASTORE_EDGES, retrieval.last_match_length, side="right"))
            self._step_group = group
            self._group = self._groups(tree)
            return tree, node_probabilities(tree, self.calibration, self._group)

        _step_group = 0

        def _groups(self, tree):
            if depths == 1 or len(tree) == 0:
                return self._step_group
            if by_presence:
                presence = node_sources(tree, merged.found)
                return self._step_group * 3 + np.maximum(presence - 1, 0)
            return self._step_group * depths + np.minimum(tree.depths - 1, depths - 1)

        def observe(self, feedback):
            if depths > 1:
                self._group = self._groups(feedback.tree)
            super().observe(feedback)

    calibration = node_grouped_calibration((len(edges) + 1) * datastore_groups * depths)
    return SourceGroupedPlanner(merged, cost, calibration=calibration, overhead=STEP_OVERHEAD_S)


def scored_retrieval_class():
    """Experimental: REST retrieval drafting from the suffix length SuffixDecoding would pick."""
    from restdecode.drafting import RetrievalDrafter
    from restdecode.drafting.base import WeightedContinuations, context_array
    from restdecode.drafting.trie import heaviest_subtree

    class ScoredRetrieval(RetrievalDrafter):
        """Searches the longest suffix, then every shorter one down to ``min_suffix`` (at most
        ``lengths`` of them, the longest first); each length's continuations would give a tree of
        min(``cap``, ``factor`` x m + ``offset``) nodes whose score is the sum of its count-ratio
        path probabilities (over the occurrences + ``self_count``); the best-scoring length
        drafts (ties: the longer)."""

        def __init__(self, datastore, *, factor=1.0, offset=0.0, cap=24, self_count=1,
                     lengths: int = 16, **options):
            super().__init__(datastore, **options)
            self.factor, self.offset, self.cap = factor, offset, cap
            self.self_count, self.lengths = self_count, lengths

        def _search(self, query, max_suffix):
            return self.datastore.search(query, max_suffix=max_suffix, min_suffix=self.min_suffix,
                                         max_matches=self.max_matches, span=self.span)

        def continuations(self, token_ids):
            query = context_array(token_ids, last=self.max_suffix)
            best_result, best_score = None, -1.0
            result = self._search(query, self.max_suffix)
            longest = int(result.match_length)
            self.last_match_length = longest
            if longest == 0 or len(result.lengths) == 0:
                return WeightedContinuations.empty(self.span)
            for m in range(longest, max(self.min_suffix, longest - self.lengths + 1) - 1, -1):
                if m < longest:
                    result = self._search(query, m)
                    if int(result.match_length) != m or len(result.lengths) == 0:
                        continue
                budget = int(max(1, min(self.cap, np.floor(self.factor * m + self.offset + 1e-6))))
                _, parents, scores = heaviest_subtree(result.continuations, result.lengths,
                                                      result.counts.astype(np.float64), budget)
                total = float(result.counts.sum())
                probability = np.empty(parents.size)
                for node, parent in enumerate(parents.tolist()):
                    probability[node] = (probability[parent] if parent >= 0 else 1.0) * scores[node]
                score = float(probability.sum()) * total / (total + self.self_count)
                if score > best_score:
                    best_result, best_score = result, score
            self.last_match_length = int(best_result.match_length)
            return WeightedContinuations(best_result.continuations, best_result.lengths,
                                         best_result.counts, int(best_result.match_length))

    return ScoredRetrieval


def scored_retrieval(datastore, cost, *, memory: bool = True, retrieval_options=None,
                     source_options=None):
    """Experimental: a scored datastore source (:func:`scored_retrieval_class`) + the memory
    or context source (scored too when ``source_options`` is given), planned."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, MemoryDrafter,
                                     PlannedDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    base = MemoryDrafter if memory else ContextDrafter
    if source_options is not None:
        source = scored_source_class(base)(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET,
                                           **source_options)
    else:
        source = base(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET)
    retrieval = scored_retrieval_class()(datastore, budget=CANDIDATE_BUDGET,
                                         **(retrieval_options or {}))
    merged = CombinedDrafter([retrieval, source], budget=CANDIDATE_BUDGET, weights=[1, 3])
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


def context_grouped(datastore, cost, *, memory: bool = True, weight: float = 3.0,
                    prior_strength: float = 8.0, source_class=None, source_options=None):
    """The default drafter's shape since 2026-11-26 (CombinedDrafter(match_from=1): calibration by the
    context / memory source's own match length, one-token minimum suffix), with its context
    weight, calibration prior and context source class as given."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, MemoryDrafter,
                                     PlannedDrafter, RetrievalDrafter)
    from restdecode.drafting.defaults import (CANDIDATE_BUDGET, CONTEXT_MIN_SUFFIX, CONTEXT_SPAN,
                                              STEP_OVERHEAD_S)
    from restdecode.drafting.planner import MATCH_LENGTH_EDGES, AcceptanceCalibration

    base = MemoryDrafter if memory else ContextDrafter
    make = base if source_class is None else source_class(base)
    source = make(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET, min_suffix=CONTEXT_MIN_SUFFIX,
                  **(source_options or {}))
    merged = CombinedDrafter([RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET), source],
                             budget=CANDIDATE_BUDGET, weights=[1, weight], match_from=1)
    calibration = AcceptanceCalibration(groups=len(MATCH_LENGTH_EDGES) + 1,
                                        prior_strength=prior_strength)
    return PlannedDrafter(merged, cost, calibration=calibration, overhead=STEP_OVERHEAD_S)


def discounted_memory_class(base):
    """Experimental: a memory whose remembered outputs' occurrences weigh ``memory_weight``
    against 1 for the current context's (prompt + answer so far)."""

    class DiscountedMemory(base):
        def __init__(self, *, memory_weight: float = 0.5, **options):
            self.memory_weight = memory_weight
            super().__init__(**options)

        def _continuations_after(self, ends, match_length):
            found = super()._continuations_after(ends, match_length)
            weights = np.where(ends < self._context_start, self.memory_weight, 1.0) * found.weights
            return type(found)(found.continuations, found.lengths, weights, match_length)

    return DiscountedMemory


def configurations(datastore):
    """name -> (cost -> drafter): the drafters compared."""
    from restdecode.drafting import default_drafter, default_memory

    variants = {
        "default": lambda cost: default_drafter(datastore, profile=cost),
        "memory": lambda cost: default_drafter(datastore, profile=cost, memory=default_memory()),
    }
    for power in (1.0, 2.0):
        variants[f"memory match power {power:g}"] = (
            lambda cost, power=power: planned(datastore, cost, memory=True, match_power=power))
    for weight in (3.0, 10.0):
        variants[f"memory x{weight:g}"] = (
            lambda cost, weight=weight: planned(datastore, cost, memory=True, weights=[1, weight]))
    for factor, offset in ((1.0, 0), (2.0, 2)):
        variants[f"memory x3 depth cap {factor:g}m+{offset}"] = (
            lambda cost, factor=factor, offset=offset: capped(datastore, cost, factor=factor,
                                                              offset=offset))
    variants["memory max merge"] = lambda cost: max_merged(datastore, cost)
    # "context x3" / "memory x3": the default drafters as they were until 2026-11-26 (two-token
    # minimum suffix, calibration grouped by the longest match of all sources).
    variants["context x3"] = lambda cost: planned(datastore, cost, weights=[1, 3])
    variants["memory x3 depth-grouped calibration"] = lambda cost: depth_grouped(datastore, cost)
    variants["memory only"] = lambda cost: planned(datastore, cost, memory=True, retrieval=False)
    variants["memory x3 suffix 32"] = lambda cost: planned(
        datastore, cost, memory=True, weights=[1, 3], context_options={"max_suffix": 32})
    variants["memory long-run rate"] = lambda cost: long_run(datastore, cost)
    variants["memory long-run rate decay 0.99"] = lambda cost: long_run(datastore, cost,
                                                                        decay=0.99)
    for decay in (0.1, 0.3, 0.5):
        variants[f"memory backoff {decay:g}"] = (
            lambda cost, decay=decay: backoff(datastore, cost, decay=decay))
        variants[f"memory backoff {decay:g} per level"] = (
            lambda cost, decay=decay: backoff(datastore, cost, decay=decay,
                                              level_normalised=True))
    variants["context x3 min suffix 1"] = lambda cost: planned(
        datastore, cost, weights=[1, 3], context_options={"min_suffix": 1})
    variants["memory x3 min suffix 1"] = lambda cost: planned(
        datastore, cost, memory=True, weights=[1, 3], context_options={"min_suffix": 1})
    variants["memory learned mixture"] = lambda cost: mixture(datastore, cost)
    variants["memory learned mixture, min suffix 1"] = lambda cost: mixture(
        datastore, cost, context_options={"min_suffix": 1})
    variants["memory learned mixture depth 2, min suffix 1"] = lambda cost: mixture(
        datastore, cost, context_options={"min_suffix": 1}, depth=2)
    variants["memory x3 support-grouped calibration"] = lambda cost: support_grouped(
        datastore, cost)
    variants["memory x3 support-grouped calibration, min suffix 1"] = lambda cost: (
        support_grouped(datastore, cost, min_suffix=1))
    # Issue 12: the match length SuffixDecoding's way (the best-scoring draft, not the longest).
    for label, options in (
        ("1m", dict(factor=1.0, offset=0.0)),
        ("1m+4", dict(factor=1.0, offset=4.0)),
        ("8 nodes", dict(factor=0.0, offset=8.0)),
    ):
        variants[f"memory scored {label}"] = (
            lambda cost, options=options: scored(datastore, cost, **options))
        variants[f"memory scored {label} pooled"] = (
            lambda cost, options=options: scored(datastore, cost, pool=True, **options))
        variants[f"memory scored {label} split"] = (
            lambda cost, options=options: scored(datastore, cost, split=True, **options))
        variants[f"context scored {label}"] = (
            lambda cost, options=options: scored(datastore, cost, memory=False, **options))
    variants["memory scored 1m no self"] = lambda cost: scored(datastore, cost, self_count=0)
    variants["memory scored 1m min suffix 2"] = lambda cost: scored(datastore, cost, min_suffix=2)
    variants["memory source-grouped calibration"] = lambda cost: source_grouped(
        datastore, cost, by_datastore=False)
    variants["memory source x datastore-grouped calibration"] = lambda cost: source_grouped(
        datastore, cost)
    variants["memory scored 1m split, source x datastore-grouped calibration"] = (
        lambda cost: source_grouped(datastore, cost, scored_options=dict(split=True)))
    variants["memory scored 1m split, source-grouped calibration"] = (
        lambda cost: source_grouped(datastore, cost, by_datastore=False,
                                    scored_options=dict(split=True)))
    variants["context source x datastore-grouped calibration"] = lambda cost: source_grouped(
        datastore, cost, memory=False)
    variants["memory source-grouped calibration, by depth"] = lambda cost: source_grouped(
        datastore, cost, by_datastore=False, depths=3)
    variants["memory source-grouped calibration, long-run rate"] = lambda cost: LongRunPlanner(
        source_grouped(datastore, cost, by_datastore=False))
    variants["memory, datastore scored 1m"] = lambda cost: scored_retrieval(datastore, cost)
    variants["memory, datastore scored 1m+4"] = lambda cost: scored_retrieval(
        datastore, cost, retrieval_options=dict(offset=4.0))
    variants["context, datastore scored 1m"] = lambda cost: scored_retrieval(
        datastore, cost, memory=False)
    variants["memory scored 1m split, datastore scored 1m"] = lambda cost: scored_retrieval(
        datastore, cost, source_options=dict(min_suffix=1, split=True))
    variants["memory source-grouped calibration, by node source"] = lambda cost: (
        source_grouped(datastore, cost, by_datastore=False, by_presence=True))
    variants["memory source-grouped calibration, min suffix 2"] = lambda cost: source_grouped(
        datastore, cost, by_datastore=False, min_suffix=2)
    variants["memory source-grouped calibration, planner's 6 groups"] = lambda cost: (
        source_grouped(datastore, cost, by_datastore=False, edges=(3, 4, 6, 9, 13)))
    variants["context source-grouped calibration"] = lambda cost: source_grouped(
        datastore, cost, by_datastore=False, memory=False)
    # On top of the 2026-11-26 defaults (match length from the context source, one-token minimum suffix).
    for weight in (2.0, 5.0):
        variants[f"memory grouped x{weight:g}"] = (
            lambda cost, weight=weight: context_grouped(datastore, cost, weight=weight))
        variants[f"context grouped x{weight:g}"] = (
            lambda cost, weight=weight: context_grouped(datastore, cost, memory=False,
                                                        weight=weight))
    for prior in (2.0, 32.0):
        variants[f"memory grouped prior {prior:g}"] = (
            lambda cost, prior=prior: context_grouped(datastore, cost, prior_strength=prior))
    variants["memory grouped, scored split"] = lambda cost: context_grouped(
        datastore, cost, source_class=scored_source_class, source_options=dict(split=True))
    variants["memory grouped, scored pooled"] = lambda cost: context_grouped(
        datastore, cost, source_class=scored_source_class, source_options=dict(pool=True))
    for memory_weight in (0.3, 0.1):
        variants[f"memory grouped, memory occurrences x{memory_weight:g}"] = (
            lambda cost, memory_weight=memory_weight: context_grouped(
                datastore, cost, source_class=discounted_memory_class,
                source_options=dict(memory_weight=memory_weight)))
    return variants


def load_run(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return json.load(file)


def curve(make, costs, prompts, prompt_ids, outputs):
    """(nodes per step, tokens per forward, draft ms per step) for each cost."""
    from restdecode.benchmark.replay import replay

    tokens = sum(len(outputs[p.id]) for p in prompts)
    points = []
    for per_node in costs:
        drafter = make(LinearCost(per_node))
        started = time.perf_counter()
        steps = [s for p in prompts for s in replay(drafter, prompt_ids[p.id], outputs[p.id])]
        elapsed = time.perf_counter() - started
        nodes = float(np.mean([s.nodes for s in steps]))
        points.append((nodes, tokens / (len(prompts) + len(steps)), 1000 * elapsed / len(steps)))
    return sorted(points)


def at_size(points, size: float) -> float | None:
    """Tokens per forward at ``size`` nodes per step, interpolated (None outside the curve)."""
    nodes = [p[0] for p in points]
    if not nodes or size < nodes[0] or size > nodes[-1]:
        return None
    return float(np.interp(size, nodes, [p[1] for p in points]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json(.gz) of a bench run")
    parser.add_argument("--datastore", type=Path, required=True, help="datastore to draft from")
    parser.add_argument("--configs", default=None, help="configuration names, separated by semicolons")
    parser.add_argument("--costs", default=DEFAULT_COSTS, help="per-node costs to sweep")
    parser.add_argument("--sizes", default="2,4,8,16", help="draft sizes to read the curves at")
    parser.add_argument("--limit", type=int, help="first N prompts only")
    args = parser.parse_args()

    from restdecode.benchmark.runner import encode_prompt
    from restdecode.datastore import Datastore
    from restdecode.models import load_tokenizer
    from restdecode.workloads import load_workload

    run = load_run(args.results)
    outputs = {row["prompt_id"]: row["token_ids"] for row in run["rows"]
               if row["method"] == "hf-greedy" and row["turn"] == 1}
    tokenizer = load_tokenizer(run["model"]["name"])
    datastore = Datastore.open(args.datastore, tokenizer)
    prompts = [p for p in load_workload(run["workload"]) if p.id in outputs][: args.limit]
    prompt_ids = {p.id: encode_prompt(tokenizer, p.text, p.messages)[0].tolist() for p in prompts}
    available = configurations(datastore)
    names = args.configs.split(";") if args.configs else list(available)
    costs = [float(c) for c in args.costs.split(",")]
    sizes = [float(s) for s in args.sizes.split(",")]

    print(f"{run['workload']}: {len(prompts)} prompts, {args.datastore.name}")
    print("| drafter | " + " | ".join(f"tok/fwd @ {s:g} nodes" for s in sizes)
          + " | curve (nodes: tok/fwd) | draft ms/step |")
    print("|---|" + "---|" * (len(sizes) + 2))
    for name in names:
        points = curve(available[name], costs, prompts, prompt_ids, outputs)
        read = [at_size(points, s) for s in sizes]
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in read)
        path = ", ".join(f"{n:.1f}: {t:.2f}" for n, t, _ in points)
        ms = f"{min(p[2] for p in points):.2f}-{max(p[2] for p in points):.2f}"
        print(f"| {name} | {cells} | {path} | {ms} |", flush=True)


if __name__ == "__main__":
    main()

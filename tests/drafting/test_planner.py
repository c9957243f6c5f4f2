"""plan_tree keeps the prefix-closed subtree with the most expected tokens per predicted second;
the calibration learns acceptance rates from verified trees; PlannedDrafter wires both in."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restdecode.drafting.planner import (
    AcceptanceCalibration,
    PlannedDrafter,
    TreeCostCorrection,
    path_probabilities,
    plan_batch,
    plan_tree,
)
from restdecode.drafting.base import StepFeedback
from restdecode.drafting.tree import DraftTree


class TableCost:
    """Cost model from a table: ``seconds[w - 1]`` for width w (last value repeated beyond)."""

    def __init__(self, seconds):
        self.seconds = np.asarray(seconds, dtype=np.float64)
        self.cache_lengths: list[int] = []

    def predict(self, width, cache_length):
        self.cache_lengths.append(cache_length)
        index = np.minimum(np.asarray(width) - 1, len(self.seconds) - 1)
        return self.seconds[index]


def linear_cost(per_node: float, max_width: int = 128) -> TableCost:
    return TableCost(1.0 + per_node * np.arange(max_width))


@st.composite
def scored_trees(draw, max_nodes: int = 8) -> DraftTree:
    n = draw(st.integers(0, max_nodes))
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    # Coarse score grid: exact ties between paths happen and exercise the tie rules.
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
                           min_size=n, max_size=n))
    # Node i proposes token 100 + i: the kept nodes can be read off the result's tokens.
    return DraftTree(np.arange(100, 100 + n), np.array(parents, dtype=np.int64), np.array(scores))


def kept_nodes(original: DraftTree, planned: DraftTree) -> list[int]:
    return [int(t) - 100 for t in planned.tokens]


def is_prefix_closed(tree: DraftTree, nodes: set[int]) -> bool:
    return all(tree.parents[i] < 0 or int(tree.parents[i]) in nodes for i in nodes)


def rate(tree: DraftTree, nodes, cost: TableCost, probabilities: np.ndarray) -> float:
    return (1.0 + probabilities[list(nodes)].sum()) / float(cost.predict(1 + len(nodes), 0))


def brute_force_best_rate(tree: DraftTree, cost: TableCost, probabilities: np.ndarray) -> float:
    best = 0.0
    for size in range(len(tree) + 1):
        for nodes in itertools.combinations(range(len(tree)), size):
            if is_prefix_closed(tree, set(nodes)):
                best = max(best, rate(tree, nodes, cost, probabilities))
    return best


def chain(scores) -> DraftTree:
    return DraftTree(np.arange(100, 100 + len(scores)), np.arange(-1, len(scores) - 1),
                     np.array(scores, dtype=np.float64))


def test_tiny_scores_and_steep_cost_give_a_plain_step():
    tree = chain([0.02, 0.5, 0.5, 0.5])
    assert len(plan_tree(tree, linear_cost(per_node=0.5), cache_length=100)) == 0


def test_flat_cost_and_high_scores_keep_the_whole_tree():
    tree = DraftTree(np.arange(6), np.array([-1, 0, 0, -1, 3, 1]),
                     np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.5]))
    planned = plan_tree(tree, linear_cost(per_node=0.0), cache_length=100)
    assert planned is tree


def test_keeps_the_most_probable_nodes_in_original_order():
    # Path probabilities: 0.9, 0.09 (0 -> 1), 0.8, 0.72 (2 -> 3).
    tree = DraftTree(np.arange(100, 104), np.array([-1, 0, -1, 2]), np.array([0.9, 0.1, 0.8, 0.9]))
    # Tokens per second by size: 1.0, 1.46, 1.69, 1.80 (nodes 0, 2, 3), then 1.60 with node 1.
    planned = plan_tree(tree, linear_cost(per_node=0.3), cache_length=0)
    assert kept_nodes(tree, planned) == [0, 2, 3]
    assert planned.parents.tolist() == [-1, -1, 1]
    assert planned.scores.tolist() == [0.9, 0.8, 0.9]  # raw scores travel with their nodes


def test_a_cheaper_bigger_width_is_taken_when_the_tree_can_fill_it():
    # Width 2 costs more than width 4 (as measured on CPUs): 3 weak nodes beat 1.
    cost = TableCost([1.0, 2.0, 2.0, 1.1])
    planned = plan_tree(chain([0.3, 0.3, 0.3]), cost, cache_length=0)
    assert len(planned) == 3


def test_the_cache_length_reaches_the_cost_model():
    cost = linear_cost(per_node=0.1)
    plan_tree(chain([0.5]), cost, cache_length=321)
    assert cost.cache_lengths == [321]


@settings(max_examples=200, deadline=None)
@given(tree=scored_trees(), costs=st.lists(st.floats(0.2, 5.0), min_size=9, max_size=9),
       monotone=st.booleans())
def test_matches_brute_force_over_prefix_closed_subtrees(tree, costs, monotone):
    cost = TableCost(np.sort(costs) if monotone else costs)
    planned = plan_tree(tree, cost, cache_length=0)
    nodes = kept_nodes(tree, planned)
    assert nodes == sorted(nodes)  # original (topological, sibling) order
    assert is_prefix_closed(tree, set(nodes))
    assert planned.parents.tolist() == [nodes.index(tree.parents[i]) if tree.parents[i] >= 0 else -1
                                        for i in nodes]
    probabilities = path_probabilities(tree, tree.scores)
    assert rate(tree, nodes, cost, probabilities) == pytest.approx(
        brute_force_best_rate(tree, cost, probabilities), rel=1e-9)


def test_path_probability_is_the_product_along_the_path():
    tree = DraftTree(np.arange(4), np.array([-1, 0, 1, -1]), np.array([0.5, 0.5, 0.4, 0.3]))
    assert path_probabilities(tree, tree.scores) == pytest.approx([0.5, 0.25, 0.1, 0.3])


def test_unscored_tree_counts_as_fully_confident():
    tree = DraftTree.chain([5, 6, 7])
    assert len(plan_tree(tree, linear_cost(per_node=0.5), cache_length=0)) == 3


def test_calibration_starts_at_the_raw_score():
    calibration = AcceptanceCalibration()
    scores = np.array([0.0, 0.07, 0.5, 0.93, 1.0])
    assert calibration.calibrate(scores) == pytest.approx(scores)


def test_calibration_moves_towards_observed_rates():
    rng = np.random.default_rng(0)
    calibration = AcceptanceCalibration(prior_strength=8.0)
    # Single-node trees scored 0.95 (over-confident: accepted 30%) and 0.15 (under: 60%).
    for _ in range(400):
        for score, true_rate in ((0.95, 0.3), (0.15, 0.6)):
            tree = chain([score])
            calibration.update(tree, [0] if rng.random() < true_rate else [])
    estimates = calibration.calibrate(np.array([0.95, 0.15]))
    assert estimates == pytest.approx([0.3, 0.6], abs=0.08)
    assert calibration.calibrate(np.array([0.5])) == pytest.approx([0.5])  # untouched bin


def test_calibration_counts_only_nodes_whose_parent_was_accepted():
    calibration = AcceptanceCalibration()
    tree = DraftTree(np.arange(4), np.array([-1, 0, -1, 2]), np.array([0.95, 0.95, 0.15, 0.15]))
    calibration.update(tree, [0, 1])  # path 0 -> 1 accepted; node 2 rejected; node 3 untested
    high, low = calibration.bucket(np.array([0.95, 0.15]))
    assert calibration.trials[0, high] == 2 and calibration.successes[0, high] == 2
    assert calibration.trials[0, low] == 1 and calibration.successes[0, low] == 0
    assert calibration.trials.sum() == 3


def test_calibration_from_rejections_shrinks_the_plan():
    calibration = AcceptanceCalibration()
    tree = chain([0.95, 0.95, 0.95])
    cost = linear_cost(per_node=0.3)
    assert len(plan_tree(tree, cost, 0, calibration=calibration)) == 3
    for _ in range(50):
        calibration.update(tree, [])  # the first node always fails
    assert len(plan_tree(tree, cost, 0, calibration=calibration)) == 0


def test_groups_learn_apart_and_start_from_the_pooled_estimate():
    rng = np.random.default_rng(1)
    calibration = AcceptanceCalibration(groups=3, prior_strength=8.0)
    # The same raw score is right 90% of the time in group 2 (long matches), 20% in group 0.
    for _ in range(400):
        for group, true_rate in ((0, 0.2), (2, 0.9)):
            calibration.update(chain([0.5]), [0] if rng.random() < true_rate else [], group)
    short, unseen, long = (calibration.calibrate(np.array([0.5]), g)[0] for g in (0, 1, 2))
    assert short == pytest.approx(0.2, abs=0.08) and long == pytest.approx(0.9, abs=0.08)
    pooled = calibration.observed_rates()[calibration.bucket(np.array([0.5]))[0]]
    assert unseen == pytest.approx(pooled, abs=0.02)  # no evidence of its own: the pooled rate
    assert np.isnan(calibration.observed_rates(1)).all()


def test_match_length_groups():
    from restdecode.drafting.planner import MATCH_LENGTH_EDGES, match_length_group

    tree = chain([0.5])
    groups = [match_length_group(tree.with_match_length(n))
              for n in (0, 2, 3, 4, 5, 6, 8, 9, 12, 13, 16)]
    assert groups == [0, 0, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert match_length_group(tree) == 0 and max(groups) == len(MATCH_LENGTH_EDGES)


def test_planned_drafter_learns_per_match_length():
    class MatchingDrafter(RecordingDrafter):
        def propose(self, token_ids):
            # the context's length stands for the suffix match length
            return super().propose(token_ids).with_match_length(len(token_ids))

    drafter = PlannedDrafter(MatchingDrafter(chain([0.9, 0.9])), linear_cost(per_node=0.3))
    for _ in range(200):
        drafter.observe(StepFeedback([5], drafter.propose([1, 2]), []))  # 2-token matches fail
        tree = drafter.propose(list(range(12)))
        drafter.observe(StepFeedback([5], tree, list(range(len(tree)))))  # 12-token ones pass
    assert len(drafter.propose([1, 2])) == 0
    assert len(drafter.propose(list(range(12)))) == 2


class RecordingDrafter:
    def __init__(self, tree: DraftTree):
        self.tree = tree
        self.calls: list[tuple] = []

    def propose(self, token_ids):
        self.calls.append(("propose", list(token_ids)))
        return self.tree

    def observe(self, feedback):
        self.calls.append(("observe", list(feedback.committed)))

    def reset(self):
        self.calls.append(("reset",))


def test_planned_drafter_plans_and_forwards():
    inner = RecordingDrafter(chain([0.9, 0.9, 0.01]))
    cost = linear_cost(per_node=0.2)
    drafter = PlannedDrafter(inner, cost)
    planned = drafter.propose([1, 2, 3, 4])
    assert kept_nodes(inner.tree, planned) == [0, 1]
    assert cost.cache_lengths == [3]  # the context without the pending token
    drafter.observe(StepFeedback([7, 8]))
    drafter.reset()
    assert inner.calls == [("propose", [1, 2, 3, 4]), ("observe", [7, 8]), ("reset",)]


def test_planned_drafter_learns_from_observed_trees():
    drafter = PlannedDrafter(RecordingDrafter(chain([0.9, 0.9])), linear_cost(per_node=0.3))
    assert len(drafter.propose([1, 2])) == 2
    for _ in range(60):
        drafter.observe(StepFeedback([5], drafter.propose([1, 2]), []))
    assert len(drafter.propose([1, 2])) == 0
    drafter.reset()  # evidence survives a new generation
    assert len(drafter.propose([1, 2])) == 0


def test_nodes_that_add_nothing_are_not_verified_even_for_free():
    planned = plan_tree(chain([0.9, 0.0, 0.0]), linear_cost(per_node=0.0), cache_length=0)
    assert len(planned) == 1


def batch_rate(rows, kept, cost: TableCost) -> float:
    """Expected tokens per second of one forward over every row and its kept nodes."""
    tokens = len(rows) + sum(probabilities[list(nodes)].sum()
                             for (_, probabilities), nodes in zip(rows, kept))
    return tokens / float(cost.predict(len(rows) + sum(map(len, kept)), 0))


def prefix_closed_subsets(tree: DraftTree) -> list[tuple[int, ...]]:
    return [nodes for size in range(len(tree) + 1)
            for nodes in itertools.combinations(range(len(tree)), size)
            if is_prefix_closed(tree, set(nodes))]


@settings(max_examples=150, deadline=None)
@given(trees=st.lists(scored_trees(max_nodes=4), min_size=1, max_size=3),
       costs=st.lists(st.floats(0.2, 5.0), min_size=16, max_size=16))
def test_batch_planning_matches_brute_force_over_every_rows_subtrees(trees, costs):
    cost = TableCost(np.sort(costs))
    rows = [(tree, path_probabilities(tree, tree.scores)) for tree in trees]
    planned = plan_batch(rows, cost, cache_length=0)
    kept = [kept_nodes(tree, plan) for tree, plan in zip(trees, planned)]
    for tree, nodes in zip(trees, kept):
        assert nodes == sorted(nodes) and is_prefix_closed(tree, set(nodes))
    best = max(batch_rate(rows, choice, cost)
               for choice in itertools.product(*(prefix_closed_subsets(t) for t in trees)))
    assert batch_rate(rows, kept, cost) == pytest.approx(best, rel=1e-9)


def test_the_width_goes_to_the_confident_row_and_none_when_compute_bound():
    confident, doubtful = chain([0.95, 0.95, 0.95]), chain([0.2, 0.2, 0.2])
    rows = [(t, path_probabilities(t, t.scores)) for t in (doubtful, confident, doubtful)]
    # A forward costs the same up to width 6 (memory-bound), then grows.
    planned = plan_batch(rows, TableCost([1.0] * 6 + [2.0] * 10), cache_length=0)
    assert [len(tree) for tree in planned] == [0, 3, 0]
    # Every extra token costs as much as a whole plain step: plain steps for the whole batch.
    compute_bound = TableCost(0.5 * np.arange(1, 20))
    assert [len(tree) for tree in plan_batch(rows, compute_bound, cache_length=0)] == [0, 0, 0]


def test_a_planned_drafters_candidate_is_what_it_plans_from():
    tree = chain([0.9, 0.8, 0.1])
    drafter = PlannedDrafter(FixedDrafter(tree), linear_cost(per_node=0.3))
    candidate, probabilities = drafter.candidate([1, 2, 3])
    assert candidate is tree
    assert probabilities == pytest.approx(path_probabilities(tree, tree.scores))
    assert drafter.propose([1, 2, 3]).tokens.tolist() == plan_batch(
        [(candidate, probabilities)], drafter.profile, 2)[0].tokens.tolist()


class FixedDrafter:
    """Proposes the same tree every time."""

    def __init__(self, tree: DraftTree) -> None:
        self.tree = tree

    def propose(self, token_ids):
        return self.tree

    def observe(self, feedback) -> None:
        pass

    def reset(self) -> None:
        pass


def test_rows_planned_elsewhere_widen_the_forward():
    """A plain row in the same forward makes each extra node cost what it costs at that width."""
    tree = chain([0.6, 0.6])
    rows = [(tree, path_probabilities(tree, tree.scores))]
    cost = TableCost([1.0, 1.0, 3.0, 3.0, 3.0])  # widths 1-2 cheap, 3 and up dear
    assert len(plan_batch(rows, cost, cache_length=0)[0]) == 1  # width 2
    assert len(plan_batch(rows, cost, cache_length=0, fixed_width=1, fixed_tokens=1.0)[0]) == 0


def test_tree_forwards_that_cost_more_than_their_price_are_priced_up():
    """Tree forwards measured at 1.5x their price and plain ones at 1.1x: the correction learns
    the ratio (1.5 / 1.1), scales only the widths beyond the plain step, and the planner then
    keeps fewer nodes of the same tree."""
    correction = TreeCostCorrection(prior=1.0, window=32.0)
    assert correction.factor == 1.0
    for _ in range(200):
        correction.observe(1.0, 1.5, trees=True)
        correction.observe(2.0, 2.2, trees=False)
    assert correction.factor == pytest.approx(1.5 / 1.1, rel=1e-3)
    cost = linear_cost(0.1)
    scaled = correction.corrected(cost, base_width=2)
    assert scaled.predict(np.array([1, 2, 3]), 0) == pytest.approx(
        [1.0, 1.1, 1.2 * correction.factor])
    tree = DraftTree(np.arange(6), np.array([-1, 0, 1, 2, 3, 4]),
                     scores=np.array([0.9, 0.8, 0.6, 0.5, 0.4, 0.3]))
    rows = [(tree, path_probabilities(tree, tree.scores))]
    assert len(plan_batch(rows, scaled, 0)[0]) < len(plan_batch(rows, cost, 0)[0])


def test_a_stray_slow_forward_moves_the_correction_only_so_far():
    correction = TreeCostCorrection(prior=8.0)
    correction.observe(0.1, 100.0, trees=True)  # one step 1000x its price: counted as 2x
    assert correction.factor == pytest.approx(1 + 1 / 9)
    correction.observe(0.0, 1.0, trees=True)  # no price: ignored
    assert correction.factor == pytest.approx(1 + 1 / 9)


def test_the_gate_stops_drafting_while_it_loses_and_probes_with_a_growing_backoff():
    from restdecode.drafting.planner import DraftingGate

    gate = DraftingGate(smoothing=1.0, max_backoff=4, min_steps=1)  # the last step's saving
    # 8 rows, plain forward 0.1 s: 8 tokens in 0.12 s lose 0.02 s against plain steps.
    pattern = []
    for _ in range(12):
        drafts = gate.should_draft()
        pattern.append(drafts)
        if drafts:
            gate.record(tokens=8, rows=8, seconds=0.12, plain_seconds=0.1)
    # draft, skip 1, probe, skip 2, probe, skip 4, probe, skip 4 (the cap) ...
    assert pattern == [True, False, True, False, False, True, False, False, False, False,
                       True, False]
    assert gate.saving == pytest.approx(-0.02)
    # Once drafting pays (12 tokens in 0.12 s: 0.03 s saved), every step drafts again.
    while not gate.should_draft():
        pass
    gate.record(tokens=12, rows=8, seconds=0.12, plain_seconds=0.1)
    assert gate.saving == pytest.approx(0.03)
    assert all(gate.should_draft() for _ in range(5))


def test_a_probe_that_paid_halves_the_backoff_while_the_mean_still_loses():
    """Where single steps win and lose by turns but drafting loses on the whole, a probe that
    paid does not bring probes back every other step: the backoff halves, it is not reset."""
    from restdecode.drafting.planner import DraftingGate

    gate = DraftingGate(smoothing=1 / 64, max_backoff=8, min_steps=1)
    outcomes = iter([-0.1, -0.01, -0.01, -0.01, +0.01, +0.01, -0.01])  # seconds saved
    gaps, since = [], None
    for _ in range(60):
        if gate.should_draft():
            if since is not None:
                gaps.append(since)
            saved = next(outcomes, None)
            if saved is None:
                break
            gate.record(tokens=8, rows=8, seconds=0.1 - saved, plain_seconds=0.1)
            since = 0
        else:
            since += 1
    assert gate.saving < 0
    assert gaps == [1, 2, 4, 8, 8, 4, 2]  # lost: doubled (cap 8); paid: halved


def test_the_gate_judges_by_a_running_mean_not_one_step():
    from restdecode.drafting.planner import DraftingGate

    gate = DraftingGate(smoothing=0.25, min_steps=2)
    gate.record(tokens=12, rows=8, seconds=0.12, plain_seconds=0.1)   # +0.03
    gate.record(tokens=8, rows=8, seconds=0.14, plain_seconds=0.1)    # -0.04: plain mean -0.005
    assert gate.saving == pytest.approx(-0.005) and not gate.should_draft()
    gate.record(tokens=12, rows=8, seconds=0.12, plain_seconds=0.1)   # still a plain mean (1/3)
    assert gate.saving == pytest.approx(-0.005 + 0.035 / 3)
    gate.record(tokens=12, rows=8, seconds=0.12, plain_seconds=0.1)   # then moving, by 1/4
    assert gate.saving == pytest.approx(0.0125)
    for bad in (dict(smoothing=0.0), dict(max_backoff=0), dict(min_steps=0)):
        with pytest.raises(ValueError):
            DraftingGate(**bad)


def test_a_gate_does_not_close_on_a_run_of_misses_while_drafting_pays_on_the_whole():
    """One row, a plain step 60 ms, a drafted one 80 ms: a miss (1 token) loses 20 ms, and one
    step in 12 commits 8 tokens (+400 ms), so drafting saves 15 ms a step on the whole. A mean
    over 8 steps (the first gate's) dips below zero in the run of misses and turns drafting
    off a third of the time (measured on SmolLM2 at 1 row: 89 of 700 steps drafted while the
    drafted steps saved 20 ms each); the default mean over ~32 steps keeps it on."""
    from restdecode.drafting.planner import DraftingGate

    def drafted_share(gate: DraftingGate) -> float:
        pattern, index = [8] + [1] * 11, 0
        for _ in range(600):
            if gate.should_draft():
                gate.record(pattern[index % 12], 1, seconds=0.08, plain_seconds=0.06)
                index += 1
        return index / 600

    # Open all along: the plain steps are the checks, about one per 48 drafted steps (drafting
    # saves 19% of a step; a check costs that, spaced to stay under 1/256 of the time).
    assert 0.97 <= drafted_share(DraftingGate()) < 1.0
    assert drafted_share(DraftingGate(smoothing=1 / 8, min_steps=1)) < 0.8


def test_the_gate_prices_plain_steps_of_any_row_count_by_what_it_measured():
    """One gate serves 9 to 16 rows; plain steps measured at 16 rows (0.11 s, priced 0.1 s)
    say what a 12-row plain step takes through its own price (0.09 s: 0.099 s), not 12/16 of
    the 16-row step (0.0825 s, which made drafted 12-row steps look cheaper than they were)."""
    from restdecode.drafting.planner import DraftingGate

    gate = DraftingGate()
    assert gate.plain_seconds(0.09, fallback_ratio=1.2) == pytest.approx(0.108)  # none measured
    gate.record_plain(0.11, priced_seconds=0.1)
    gate.record_plain(0.5, priced_seconds=0.0)  # no price: ignored
    assert gate.plain_seconds(0.09, fallback_ratio=1.2) == pytest.approx(0.099)
    gate.record_plain(0.13, priced_seconds=0.1)  # a plain mean of the first ones
    assert gate.plain_ratio == pytest.approx(1.2)


@pytest.mark.parametrize("seconds, spacing", [(0.098, 8), (0.080, 64)])
def test_an_open_gate_checks_plain_steps_more_often_the_less_drafting_saves(seconds, spacing):
    """Drafted steps saving 2% of a step (0.002 s of 0.098 s) are checked against a plain step
    every 8 drafted steps (``min_steps``), ones saving 25% every 64: a check costs one step's
    saving, and where drafting barely pays a stale plain reference misleads most."""
    from restdecode.drafting.planner import DraftingGate

    gate, pattern = DraftingGate(min_steps=8), []
    for _ in range(200):
        drafts = gate.should_draft()
        pattern.append(drafts)
        if drafts:
            gate.record(tokens=1, rows=1, seconds=seconds, plain_seconds=0.1)
        else:
            gate.record_plain(0.1, priced_seconds=0.1)
    checks = [i for i, drafts in enumerate(pattern) if not drafts]
    assert checks[0] == spacing  # the first after as many drafted steps
    assert all(b - a - 1 == spacing for a, b in zip(checks, checks[1:]))
    assert gate.saving > 0


def test_each_number_of_rows_keeps_its_own_verdict():
    """Drafting that loses at 16 rows closes the 16-row gate only: a step of 4 rows drafts at
    once, and the 16-row gate stays closed, backing off up to its cap (64 by default)."""
    from restdecode.drafting.planner import BatchGates

    gates = BatchGates(row_steps=1, min_window=1, min_steps=1)  # the last step's saving
    assert gates.should_draft(16)
    gates.record(tokens=16, rows=16, seconds=0.2, plain_seconds=0.1)  # loses 0.1 s
    assert gates.should_draft(4)  # a new count drafts at its first step
    gates.record(tokens=8, rows=4, seconds=0.1, plain_seconds=0.08)  # saves 0.06 s
    pattern = []
    for _ in range(200):
        drafts = gates.should_draft(16)
        pattern.append(drafts)
        if drafts:
            gates.record(tokens=16, rows=16, seconds=0.2, plain_seconds=0.1)
    probes = [i for i, drafts in enumerate(pattern) if drafts]
    assert [b - a - 1 for a, b in zip(probes, probes[1:])] == [2, 4, 8, 16, 32, 64, 64]
    assert all(gates.should_draft(4) for _ in range(5))
    assert gates.for_rows(16).saving < 0 < gates.for_rows(4).saving
    # Counts up to the same power of two share a verdict, as the batch profile's rows do.
    assert gates.for_rows(12) is gates.for_rows(16) and gates.for_rows(3) is gates.for_rows(4)
    assert gates.for_rows(1) is not gates.for_rows(2) and gates.for_rows(5) is gates.for_rows(8)
    for bad in (dict(max_backoff=0), dict(row_steps=0), dict(min_window=0)):
        with pytest.raises(ValueError):
            BatchGates(**bad)


def test_a_gate_of_more_rows_judges_by_fewer_steps():
    """A mean over ~32 row-steps, at least 8 steps: one row 32 steps, 4 rows and more 8."""
    from restdecode.drafting.planner import BatchGates

    gates = BatchGates()
    assert [gates.for_rows(rows).smoothing for rows in (1, 2, 3, 8, 16)] == pytest.approx(
        [1 / 32, 1 / 16, 1 / 8, 1 / 8, 1 / 8])

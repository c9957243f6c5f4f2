"""PricedDraftModel: the draft model drafts only as deep as its own forwards pay (priced by its
latency profile), retrieval stands in for it when cheaper, chains stop early on unlikely
tokens, what the draft was worth is learned from committed tokens, and greedy output stays
token-identical whatever the plan."""

from __future__ import annotations

import time

import numpy as np
import pytest

from test_draft_model import byte_model, prompts, tokenizer
from restdecode.decode import generate
from restdecode.drafting import ContextDrafter, DraftModelDrafter, DraftTree, StepFeedback
from restdecode.drafting.draft_model import merge_draft_model
from restdecode.drafting.draft_planner import (PROBE_AFTER, PricedDraftModel, chain_outcome,
                                               first_chain, merged_tree, path_chances,
                                               united, verified_nodes)
from restdecode.drafting.base import WeightedContinuations


class LinearProfile:
    """seconds = fixed + per_token * width (any cache length)."""

    def __init__(self, fixed: float, per_token: float) -> None:
        self.fixed, self.per_token = fixed, per_token

    def predict(self, width, cache_length):
        return self.fixed + self.per_token * np.asarray(width, dtype=np.float64)


class CountingDraft(DraftModelDrafter):
    """A DraftModelDrafter that records the depth of every proposal it was asked for."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def propose(self, token_ids, *, depth=None, keep_going=None):
        self.calls.append(depth)
        return super().propose(token_ids, depth=depth, keep_going=keep_going)


NOTHING = np.zeros(0)  # retrieval found nothing
TARGET = LinearProfile(0.010, 0.0005)  # a 10 ms forward, width nearly free
REPEATING = [5, 6, 7, 8, 9, 10, 11, 12] * 4  # the context source predicts its next tokens


def priced(draft_profile, *, k=4, branches=1, prior=None, model=None):
    draft = CountingDraft(model if model is not None else byte_model("llama"), k=k,
                          branches=branches)
    planner = PricedDraftModel(draft, ContextDrafter(budget=16, min_suffix=1), TARGET,
                               draft_profile, budget=16)
    if prior is not None:
        planner.prior_acceptance = prior
    return planner, draft


def test_an_expensive_draft_model_is_not_called_and_a_cheap_one_drafts_its_full_depth():
    expensive, _ = priced(LinearProfile(0.050, 0.0))
    cheap, draft = priced(LinearProfile(0.0001, 0.0), prior=0.9)
    context = [3, 4, 17, 21]  # nothing repeats: retrieval has nothing to offer
    assert expensive.draft_depth(NOTHING, 0, 3) == 0
    assert len(expensive.propose(context)) == 0 and expensive.draft.calls == []
    assert expensive.draft.session is None  # its model never ran
    assert cheap.draft_depth(NOTHING, 0, 3) == 4
    tree = cheap.propose(context)
    assert draft.calls == [4] and tree.max_depth >= 1


def test_a_confident_retrieval_match_stands_in_for_a_moderately_priced_draft():
    planner, draft = priced(LinearProfile(0.004, 0.0))
    assert planner.draft_depth(NOTHING, 0, 40) > 0  # alone the draft would pay
    tree = planner.propose(REPEATING)
    assert draft.calls == [] and planner.last_depth == 0
    assert tree.max_depth >= 3  # the context's repetition, verified without the draft model


def test_the_depth_grows_with_the_draft_models_observed_acceptance():
    planner, _ = priced(LinearProfile(0.002, 0.0))
    depths = []
    for rate in (0.2, 0.5, 0.8, 0.95):
        planner.prior_acceptance, planner.prior_strength = rate, 1e9
        depths.append(planner.draft_depth(NOTHING, 0, 10))
    assert depths == sorted(depths) and depths[0] < depths[-1]


def test_drafting_seconds_price_chain_tokens_and_tree_levels_by_their_width():
    chain, _ = priced(LinearProfile(0.001, 0.001))
    assert chain.drafting_seconds(3, 10) == pytest.approx(3 * 0.002)
    tree, _ = priced(LinearProfile(0.001, 0.001), k=3, branches=2)
    assert tree.drafting_seconds(3, 10) == pytest.approx(0.002 + 0.004 + 0.006)
    assert tree.drafting_seconds(0, 10) == 0.0


def test_a_long_prompt_not_yet_fed_to_the_draft_model_does_not_keep_it_idle():
    """The first draft feeds the whole prompt (a prefill); that debt is paid whenever the draft
    model drafts, so it must not price the draft model out of every step."""
    planner, draft = priced(LinearProfile(0.001, 0.001), prior=0.8)
    prompt = [int(t) for t in np.random.default_rng(3).integers(3, 200, 120)]
    planner.propose(prompt)
    assert draft.calls and draft.calls[0] > 0


def test_sources_and_draft_reach_depths_as_independent_drafts():
    assert united(np.array([0.5, 0.2]), np.array([0.5])).tolist() == [0.75, 0.2]
    planner, _ = priced(LinearProfile(0.002, 0.0))
    planner.prior_acceptance, planner.prior_strength = 0.5, 1e9
    assert planner.draft_reach(3) == pytest.approx([0.5, 0.25, 0.125])
    tree, _ = priced(LinearProfile(0.002, 0.0), k=3, branches=2)
    tree.prior_acceptance, tree.prior_strength = 0.5, 1e9
    assert tree.draft_reach(2) == pytest.approx([0.75, 0.375])
    # a sure retrieval path to depth 3 leaves nothing for the draft to add there
    assert planner.draft_depth(np.ones(3), 3, 10) == 0


def test_a_chain_stops_early_at_a_token_unlikely_to_be_accepted():
    planner, _ = priced(LinearProfile(0.003, 0.0), prior=0.9)
    keep_going = planner._keep_going(NOTHING, 0, 10)
    assert keep_going([0.99, 0.98])
    assert not keep_going([0.99, 0.02])  # the chain so far is unlikely to be accepted at all


def test_the_drafter_honours_depth_and_early_stop():
    draft = DraftModelDrafter(byte_model("llama"), k=5)
    assert draft.propose([3, 4, 5], depth=2).max_depth == 2
    draft.reset()
    asked = []
    tree = draft.propose([3, 4, 5], keep_going=lambda scores: asked.append(len(scores)) or
                         len(scores) < 3)
    assert tree.max_depth == 3 and asked == [1, 2, 3]
    with pytest.raises(ValueError, match="depth"):
        draft.propose([3, 4, 5], depth=6)


@pytest.mark.parametrize("chain,committed,tested,accepted", [
    ([1, 2, 3], [1, 2, 9], 3, [0, 1]),  # the third was tested and missed
    ([1, 2, 3], [7], 1, []),            # the first missed
    ([1, 2, 3], [1, 2], 2, [0, 1]),     # agreed as far as anything was committed: no miss
    ([1, 2], [1, 2, 3, 4], 2, [0, 1]),  # a longer commit (retrieval) agrees with the chain
])
def test_a_chain_counts_the_tokens_tested_until_the_first_miss(chain, committed, tested,
                                                               accepted):
    draft = DraftTree(np.array(chain), np.arange(-1, len(chain) - 1), np.linspace(0.9, 0.5,
                                                                                  len(chain)))
    got, got_accepted = chain_outcome(draft, committed)
    assert got.tokens.tolist() == chain[:tested] and got_accepted == accepted
    assert got.scores.tolist() == draft.scores[:tested].tolist()


def test_observe_learns_the_draft_models_acceptance_from_committed_tokens():
    planner, _ = priced(LinearProfile(0.0001, 0.0), prior=0.9)
    tree = planner.propose([3, 4, 17, 21])
    chain = planner._chain.tokens.tolist()
    assert chain and len(tree) and chain[0] == first_chain(tree).tokens[0]  # drafted, leads
    before = planner.acceptance_rate
    planner.observe(StepFeedback(committed=[chain[0], -1], tree=tree))
    tested = 2 if len(chain) > 1 else 1  # its second token (if any) was tested and missed
    calibration = planner.draft_calibration
    assert (calibration.successes.sum(), calibration.trials.sum()) == (1, tested)
    assert planner.acceptance_rate == pytest.approx((1 + 8 * 0.9) / (tested + 8))
    assert planner.acceptance_rate != before


def test_first_chain_follows_first_children_and_merge_weighs_sources():
    tree = DraftTree(np.array([5, 6, 7, 8]), np.array([-1, -1, 0, 1]))
    assert first_chain(tree).tokens.tolist() == [5, 7]
    a = WeightedContinuations(np.array([[1, 2]]), np.array([2]), np.array([1.0]))
    b = WeightedContinuations(np.array([[3, 4]]), np.array([2]), np.array([5.0]))
    merged = merged_tree([a, b], [3.0, 1.0], 2)  # normalised, a weighs 3 against b's 1
    assert merged.tokens.tolist() == [1, 2]


def record_depths(planner: PricedDraftModel) -> list[int]:
    """A list that fills with the draft depth of each of ``planner``'s steps."""
    depths, propose = [], planner.propose

    def recorded(token_ids):
        tree = propose(token_ids)
        depths.append(planner.last_depth)
        return tree

    planner.propose = recorded
    return depths


@pytest.mark.parametrize("draft_cost", [0.0001, 0.004, 0.05])
@pytest.mark.parametrize("arch,branches", [("llama", 1), ("qwen2", 2), ("gemma3", 1)])
def test_greedy_through_the_priced_planner_is_token_identical(arch, branches, draft_cost):
    """Whatever the plan (always, sometimes or never the draft model), greedy output equals plain
    greedy; the draft is the target itself (long acceptances) or another model (rollbacks)."""
    target = byte_model(arch)
    for draft_model in (target, byte_model(arch, layers=1, seed=5)):
        draft = DraftModelDrafter(draft_model, k=3, branches=branches)
        drafter = merge_draft_model(draft, ContextDrafter(budget=8, min_suffix=1), budget=8,
                                    profile=TARGET, draft_profile=LinearProfile(draft_cost, 0.0))
        assert isinstance(drafter, PricedDraftModel)
        depths = record_depths(drafter)
        for prompt in prompts() + [REPEATING[:10]]:
            plain = generate(target, tokenizer(), input_ids=prompt, max_new_tokens=24)
            got = generate(target, tokenizer(), input_ids=prompt, drafter=drafter,
                           max_new_tokens=24)
            assert got.token_ids == plain.token_ids
        # the plan follows the draft's price: drafting often, or only to probe
        drafted = sum(depth > 0 for depth in depths)
        if draft_cost == 0.0001:
            assert drafted > len(depths) // 2
        elif draft_cost == 0.05:
            assert drafted <= len(depths) // PROBE_AFTER


def test_a_merged_step_teaches_the_sources_calibration_only_about_their_own_nodes():
    sources = DraftTree(np.array([5, 6, 7]), np.array([-1, 0, -1]), np.array([0.9, 0.8, 0.1]))
    # the merged, verified tree: the draft's 9 first, then the sources' 5 -> 6 (7 was cut)
    verified = DraftTree(np.array([9, 5, 6]), np.array([-1, -1, 1]))
    tested, accepted = verified_nodes(sources, StepFeedback(committed=[5, 6, 2], tree=verified,
                                                             accepted_nodes=[1, 2]))
    assert tested.tolist() == [True, True, False] and accepted == [0, 1]
    planner, _ = priced(LinearProfile(0.0001, 0.0), prior=0.9)
    planner.propose([3, 4, 17, 21])  # drafts (cheap), so the next feedback is a merged step's
    planner._sources_tree, planner._sources_chances = sources, np.array([0.5, 0.25, 0.1])
    planner.observe(StepFeedback(committed=[5, 6, 2], tree=verified, accepted_nodes=[1, 2]))
    assert planner.calibration.trials.sum() == 2  # 5 and 6; not the draft's 9, not 7
    assert planner.calibration.successes.sum() == 2
    # 2 accepted where 0.75 were expected: trust grows (prior: 4 nodes as promised)
    assert planner.sources_trust == pytest.approx((2 + 4) / (0.75 + 4))


def test_a_merged_node_has_the_union_of_its_chances_in_each_source():
    merged = DraftTree(np.array([5, 6, 9]), np.array([-1, 0, -1]))
    sources = DraftTree(np.array([5, 6]), np.array([-1, 0]))
    draft = DraftTree(np.array([5, 9]), np.array([-1, -1]))
    from_sources = path_chances(merged, sources, np.array([0.5, 0.4]))
    from_draft = path_chances(merged, draft, np.array([0.6, 0.3]))
    assert from_sources.tolist() == [0.5, 0.4, 0.0] and from_draft.tolist() == [0.6, 0.0, 0.3]
    assert united(from_sources, from_draft) == pytest.approx([0.8, 0.4, 0.3])


def test_sources_promising_more_than_they_keep_are_trusted_less_and_the_draft_steps_in():
    planner, draft = priced(LinearProfile(0.004, 0.0))
    assert planner.propose(REPEATING) is not None and draft.calls == []  # trusted: no draft
    planner.sources_expected, planner.sources_accepted = 400.0, 20.0  # kept 1 in 20
    assert planner.sources_trust == pytest.approx(24 / 404)
    planner.propose(REPEATING)
    assert draft.calls  # the same confident-looking match no longer stands in for the draft


def test_chances_stay_probabilities_when_the_sources_are_trusted_more_than_promised():
    planner, _ = priced(LinearProfile(0.05, 0.0))
    planner.sources_expected, planner.sources_accepted = 10.0, 30.0  # kept more than promised
    assert planner.sources_trust > 1
    tree = planner.propose(REPEATING)
    assert len(tree) and (tree.parents < np.arange(len(tree))).all()  # a well-formed cut


def test_a_draft_model_left_idle_is_probed_so_its_estimate_can_recover():
    planner, draft = priced(LinearProfile(0.05, 0.0))
    context = [3, 4, 17, 21]
    for _ in range(PROBE_AFTER):
        planner.propose(context)
    assert draft.calls == []
    planner.propose(context)
    assert draft.calls == [1]  # one token, to learn from
    for _ in range(2 * PROBE_AFTER):
        planner.propose(context)
    assert draft.calls == [1]  # the probe did not bring it back: the next one waits twice as long
    planner.propose(context)
    assert draft.calls == [1, 1]


def test_a_draft_slower_than_its_profile_is_priced_by_what_its_calls_took():
    class SlowDraft(CountingDraft):
        def propose(self, token_ids, *, depth=None, keep_going=None):
            time.sleep(0.1)  # e.g. a second llama.cpp context competing for the cores
            return super().propose(token_ids, depth=depth, keep_going=keep_going)

    draft = SlowDraft(byte_model("llama"), k=4)
    planner = PricedDraftModel(draft, ContextDrafter(budget=16, min_suffix=1), TARGET,
                               LinearProfile(0.004, 0.0), budget=16)
    planner.prior_acceptance = 0.9
    assert planner.draft_depth(NOTHING, 0, 3) > 0  # as profiled, the draft pays
    for extra in range(6):
        planner.propose([3, 4, 17, 21] + list(range(30, 30 + extra)))
    assert len(draft.calls) >= 2  # the prefill call (not counted) and at least one timed
    assert planner.draft_cost_scale > 2
    assert planner.draft_depth(NOTHING, 0, 3) == 0  # as measured, it does not

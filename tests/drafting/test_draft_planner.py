"""PricedDraftModel: the draft model drafts only as deep as its own forwards pay (priced by its
latency profile), retrieval stands in for it when cheaper, chains stop early on unlikely
tokens, what the draft was worth is learned from committed tokens, and greedy output stays
token-identical whatever the plan."""

from __future__ import annotations

import numpy as np
import pytest

from test_draft_model import byte_model, prompts, tokenizer
from restdecode.decode import generate
from restdecode.drafting import ContextDrafter, DraftModelDrafter, DraftTree, StepFeedback
from restdecode.drafting.draft_model import merge_draft_model
from restdecode.drafting.draft_planner import (DraftAcceptance, PricedDraftModel, first_chain,
                                               merged_tree)
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


TARGET = LinearProfile(0.010, 0.0005)  # a 10 ms forward, width nearly free
REPEATING = [5, 6, 7, 8, 9, 10, 11, 12] * 4  # the context source predicts its next tokens


def priced(draft_profile, *, k=4, branches=1, prior=None, model=None):
    draft = CountingDraft(model if model is not None else byte_model("llama"), k=k,
                          branches=branches)
    planner = PricedDraftModel(draft, ContextDrafter(budget=16, min_suffix=1), TARGET,
                               draft_profile, budget=16)
    if prior is not None:
        planner.acceptance.prior = prior
    return planner, draft


def test_an_expensive_draft_model_is_not_called_and_a_cheap_one_drafts_its_full_depth():
    expensive, _ = priced(LinearProfile(0.050, 0.0))
    cheap, draft = priced(LinearProfile(0.0001, 0.0), prior=0.9)
    context = [3, 4, 17, 21]  # nothing repeats: retrieval has nothing to offer
    assert expensive.draft_depth((0.0, 0), 3, 1) == 0
    assert len(expensive.propose(context)) == 0 and expensive.draft.calls == []
    assert expensive.draft.session is None  # its model never ran
    assert cheap.draft_depth((0.0, 0), 3, 1) == 4
    tree = cheap.propose(context)
    assert draft.calls == [4] and tree.max_depth >= 1


def test_a_confident_retrieval_match_stands_in_for_a_moderately_priced_draft():
    planner, draft = priced(LinearProfile(0.004, 0.0))
    assert planner.draft_depth((0.0, 0), 40, 1) > 0  # alone the draft would pay
    tree = planner.propose(REPEATING)
    assert draft.calls == [] and planner.last_depth == 0
    assert tree.max_depth >= 3  # the context's repetition, verified without the draft model


def test_the_depth_grows_with_the_draft_models_observed_acceptance():
    planner, _ = priced(LinearProfile(0.002, 0.0))
    depths = []
    for rate in (0.2, 0.5, 0.8, 0.95):
        planner.acceptance.prior, planner.acceptance.strength = rate, 1e9
        depths.append(planner.draft_depth((0.0, 0), 10, 1))
    assert depths == sorted(depths) and depths[0] < depths[-1]


def test_drafting_seconds_price_the_first_forward_by_what_it_feeds_and_tree_levels_by_width():
    chain, _ = priced(LinearProfile(0.001, 0.001))
    assert chain.drafting_seconds(3, 10, fed=5) == pytest.approx(0.006 + 0.002 + 0.002)
    tree, _ = priced(LinearProfile(0.001, 0.001), k=3, branches=2)
    assert tree.drafting_seconds(3, 10, fed=1) == pytest.approx(0.002 + 0.004 + 0.006)
    assert tree.drafting_seconds(0, 10, fed=1) == 0.0


def test_a_chain_stops_early_at_a_token_unlikely_to_be_accepted():
    planner, _ = priced(LinearProfile(0.003, 0.0), prior=0.9)
    keep_going = planner._keep_going((0.0, 0), 10, 1)
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


def test_unfed_counts_what_the_next_proposal_feeds():
    draft = DraftModelDrafter(byte_model("llama"), k=3)
    assert draft.unfed([3, 4, 5]) == 3
    first, second, _ = draft.propose([3, 4, 5]).tokens.tolist()
    assert draft.unfed([3, 4, 5]) == 1  # at least the pending token, for the logits
    assert draft.unfed([3, 4, 5, first, second, 99]) == 1  # it holds the accepted drafts
    assert draft.unfed([3, 4, 5, first + 1, 7]) == 2
    assert draft.unfed([3, 7, 5, 9]) == 3


@pytest.mark.parametrize("chain,committed,accepted,tested", [
    ([1, 2, 3], [1, 2, 9], 2, 3),   # the third was tested and missed
    ([1, 2, 3], [7], 0, 1),         # the first missed
    ([1, 2, 3], [1, 2], 2, 2),      # agreed as far as anything was committed: nothing missed
    ([1, 2], [1, 2, 3, 4], 2, 2),   # a longer commit (retrieval) agrees with the whole chain
])
def test_draft_acceptance_counts_tokens_tested_until_the_first_miss(chain, committed, accepted,
                                                                    tested):
    counter = DraftAcceptance(prior=0.5, strength=2.0)
    counter.count(chain, committed)
    assert (counter.accepted, counter.tested) == (accepted, tested)
    assert counter.rate == pytest.approx((accepted + 1.0) / (tested + 2.0))


def test_observe_learns_the_draft_models_acceptance_from_committed_tokens():
    planner, _ = priced(LinearProfile(0.0001, 0.0), prior=0.9)
    tree = planner.propose([3, 4, 17, 21])
    chain = planner._chain
    assert chain and chain[0] == first_chain(tree)[0]  # the cheap draft drafted, and leads
    planner.observe(StepFeedback(committed=[chain[0], -1], tree=tree))
    tested = 2 if len(chain) > 1 else 1  # its second token (if any) was tested and missed
    assert (planner.acceptance.accepted, planner.acceptance.tested) == (1, tested)


def test_first_chain_follows_first_children_and_merge_weighs_sources():
    tree = DraftTree(np.array([5, 6, 7, 8]), np.array([-1, -1, 0, 1]))
    assert first_chain(tree) == [5, 7]
    a = WeightedContinuations(np.array([[1, 2]]), np.array([2]), np.array([1.0]))
    b = WeightedContinuations(np.array([[3, 4]]), np.array([2]), np.array([5.0]))
    merged = merged_tree([a, b], [3.0, 1.0], 2)  # normalised, a weighs 3 against b's 1
    assert merged.tokens.tolist() == [1, 2]


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
        for prompt in prompts() + [REPEATING[:10]]:
            plain = generate(target, tokenizer(), input_ids=prompt, max_new_tokens=24)
            got = generate(target, tokenizer(), input_ids=prompt, drafter=drafter,
                           max_new_tokens=24)
            assert got.token_ids == plain.token_ids

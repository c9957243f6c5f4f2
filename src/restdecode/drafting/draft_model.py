"""A smaller model of the same tokenizer drafts for the target (issue 16: draft-model speculation).

:class:`DraftModelDrafter` runs the draft model on any backend (``restdecode.backends``:
transformers or llama.cpp) in a session of its own, kept in step with the committed context:
each ``propose`` truncates the session back to the longest common prefix of what it holds and
the new context (a partial acceptance rolls back the rejected draft tokens, the prompt is never
prefilled again), feeds what the context gained, then drafts.

Shapes:

* a **chain** (``branches=1``): ``k`` tokens, one forward each (the first forward also feeds the
  new context tokens);
* a **tree** (``branches=b > 1``): ``b`` children of the root, each continued as a chain down to
  depth ``k``; one forward per level, verifying the tree drafted so far below the pending token
  (the level's forward is then truncated away). Greedy: the top-``b`` tokens, each continued by
  argmax. Sampled: ``b`` i.i.d. draws from q (SpecInfer), each continued by one draw per level;
  chains drawing the same prefix share its nodes, and a shared node then holds one i.i.d. draw
  per chain through it.

With a ``sampler`` (temperature / top-k / top-p, usually the target's), tokens are drawn from the
draft's processed distribution q and the tree carries them as
:class:`~restdecode.drafting.draws.Draws`, so sampling acceptance uses the min(1, p/q) rule;
without one, drafts are the argmax (deterministic drafts, accepted by the rule for those). Either
way the target's output distribution is unchanged. Node ``scores`` = q(token) at its parent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from restdecode.backends import as_backend
from restdecode.drafting.base import StepFeedback
from restdecode.drafting.draws import Draws
from restdecode.drafting.tree import DraftTree
from restdecode.errors import DecodingError, ModelError

if TYPE_CHECKING:
    from restdecode.accept import Sampler
    from restdecode.drafting.base import Drafter
    from restdecode.drafting.planner import AcceptanceCalibration, CostModel


def check_same_tokenizer(target_tokenizer, draft_tokenizer) -> None:
    """ModelError unless both tokenizers have the same vocabulary (``get_vocab()``: every token
    with the same id) and the same special tokens; the message names both vocabularies."""

    def describe(tokenizer, vocab: dict) -> str:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        return f"{name!r} ({len(vocab)} tokens)"

    target_vocab, draft_vocab = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    problems = []
    if target_vocab != draft_vocab:
        differing = sorted(set(target_vocab.items()) ^ set(draft_vocab.items()),
                           key=lambda item: item[1])[:3]
        problems.append(f"vocabularies differ (e.g. {differing})")
    target_special = dict(getattr(target_tokenizer, "special_tokens_map", {}))
    draft_special = dict(getattr(draft_tokenizer, "special_tokens_map", {}))
    if target_special != draft_special:
        problems.append(f"special tokens differ ({target_special} vs {draft_special})")
    if problems:
        raise ModelError(
            f"the draft model's tokenizer {describe(draft_tokenizer, draft_vocab)} is not the "
            f"target's {describe(target_tokenizer, target_vocab)}: {'; '.join(problems)}. "
            f"A draft model must share the target's tokenizer")


class DraftModelDrafter:
    """Drafts with a smaller model (module docstring: chain or tree, greedy or sampled).

    * ``draft``: a transformers model or a :class:`~restdecode.backends.Backend` (on llama.cpp:
      a backend of its own, not the target's: a llama.cpp backend runs one session at a time);
    * ``k``: draft depth; ``branches``: children of the root (1: a chain);
    * ``sampler``: draw from the draft's processed distribution (None: argmax drafts);
    * ``seed``: seeds the drafter's own generator once (None: from the OS). Its draws must be
      fresh for every step, so :meth:`reset` does not re-seed it;
    * ``vocab_size``: only ids below it are drafted (the target's vocabulary, when the draft's
      embedding table is larger);
    * ``target_tokenizer`` / ``draft_tokenizer``: when both are given they are checked with
      :func:`check_same_tokenizer`.
    """

    def __init__(self, draft, *, k: int = 4, branches: int = 1, sampler: "Sampler | None" = None,
                 seed: int | None = None, vocab_size: int | None = None,
                 target_tokenizer=None, draft_tokenizer=None) -> None:
        if k < 1 or branches < 1:
            raise ValueError(f"k and branches must be >= 1, got k={k}, branches={branches}")
        if target_tokenizer is not None and draft_tokenizer is not None:
            check_same_tokenizer(target_tokenizer, draft_tokenizer)
        self.backend = as_backend(draft)
        self.k, self.branches, self.sampler = k, branches, sampler
        self.vocab_size = min(vocab_size or self.backend.vocab_size, self.backend.vocab_size)
        if branches > self.vocab_size and sampler is None:
            raise ValueError(f"{branches} greedy branches need as many distinct tokens")
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
        self.session = None
        self.held: list[int] = []  # the tokens whose KV entries the session holds

    def reset(self) -> None:
        """A new generation: the next proposal starts a new session with a prefill."""
        self.session, self.held = None, []

    def observe(self, feedback: StepFeedback) -> None:
        """Nothing to learn: ``propose`` compares the context with what the session holds."""

    @torch.inference_mode()
    def propose(self, token_ids: Sequence[int], *, depth: int | None = None,
                keep_going: "Callable[[list[float]], bool] | None" = None) -> DraftTree:
        """A chain or tree of draft tokens after ``token_ids`` (pending token last).

        ``depth`` (1..k, default k) drafts fewer levels this step; ``keep_going`` (chains only)
        is asked after each drafted token, with the draft's probabilities of the tokens so
        far, whether the next one is worth its forward (a planner's early stop)."""
        depth = self.k if depth is None else depth
        if not 1 <= depth <= self.k:
            raise ValueError(f"depth must be in 1..{self.k}, got {depth}")
        context = [int(t) for t in token_ids]
        limit = self.backend.context_limit
        if limit is not None and len(context) + self.k >= limit:
            return DraftTree.empty()  # the draft model's context is full
        root = self.feed(context)
        if self.branches == 1:
            return self._chain(root, depth, keep_going)
        return self._tree(context, root, depth)

    def feed(self, context: list[int]) -> torch.Tensor:
        """Make the session hold all of ``context``; the draft's logits after it.

        The session goes back to the longest common prefix of what it holds and ``context``
        (at least one token is fed, for the logits), then the rest is one forward; a session
        that cannot go back that far (a sliding-window cache) starts over with a prefill.
        """
        common = 0
        for held, new in zip(self.held, context):
            if held != new:
                break
            common += 1
        common = min(common, len(context) - 1)
        if self.session is not None and common > 0:
            try:
                self.session.truncate(common)
            except DecodingError:
                common = 0
        if self.session is None or common == 0:
            if self.session is None:
                self.session = self.backend.session(rollback=self.k + 1)
            self.held = list(context)
            return self.session.prefill(context).clone()
        new = context[common:]
        chain = DraftTree.chain(new[1:]).compile(self.backend.device)
        logits = self.session.verify(new[0], chain)[-1].clone()
        self.session.commit(list(range(len(new))))
        self.held = list(context)
        return logits

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """q: the draft's (processed, with a sampler) distribution, float32 on the CPU, over
        the ids it may draft."""
        logits = logits[: self.vocab_size].cpu()
        if self.sampler is None:
            return torch.softmax(logits.double(), dim=-1).float()
        return self.sampler.probs(logits).float()

    def _pick(self, q: torch.Tensor, count: int) -> list[int]:
        """``count`` tokens from q: the top ones (greedy), or i.i.d. draws."""
        if self.sampler is None:
            return torch.topk(q, count).indices.tolist()
        return torch.multinomial(q, count, replacement=True, generator=self.generator).tolist()

    def _chain(self, logits: torch.Tensor, length: int,
               keep_going: "Callable[[list[float]], bool] | None") -> DraftTree:
        """Up to ``length`` tokens, each forward committed (the session ends holding all but the
        last)."""
        tokens, scores, rows = [], [], []
        plain_step = DraftTree.empty().compile(self.backend.device)
        for depth in range(length):
            q = self.distribution(logits)
            token = self._pick(q, 1)[0]
            tokens.append(token)
            scores.append(float(q[token]))
            rows.append(q)
            if depth + 1 == length or (keep_going is not None and not keep_going(scores)):
                break
            logits = self.session.verify(token, plain_step)[0].clone()
            self.session.commit([0])
            self.held.append(token)
        tree = DraftTree.chain(tokens)
        draws = None
        if self.sampler is not None:
            depths = np.arange(len(tokens))
            draws = Draws(depths - 1, depths, tokens, depths, torch.stack(rows))
        return DraftTree(tree.tokens, tree.parents, np.array(scores), draws=draws)

    def _tree(self, context: list[int], root_logits: torch.Tensor, levels: int) -> DraftTree:
        """``branches`` chains below the root, ``levels`` deep, one forward per level (module
        docstring)."""
        past = len(context) - 1  # the pending token is slot 0 of every level's forward
        self.session.truncate(past)
        self.held = context[:-1]
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []
        node_of: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        anchors, drawn, rows, q_rows = [], [], [], []
        ends = [-1] * self.branches  # the node each chain has reached (-1: the root)
        logits = root_logits[None]
        for level in range(levels):
            next_ends = []
            for anchor in dict.fromkeys(ends):  # each node reached, once
                q = self.distribution(logits[anchor + 1])
                chains = [i for i, end in enumerate(ends) if end == anchor]
                picks = (self._pick(q, len(chains)) if self.sampler is not None or level == 0
                         else self._pick(q, 1) * len(chains))
                for chain, token in zip(chains, picks):
                    if (anchor, token) not in node_of:
                        node_of[(anchor, token)] = len(tokens)
                        tokens.append(token)
                        parents.append(anchor)
                        scores.append(float(q[token]))
                    next_ends.append((chain, node_of[(anchor, token)]))
                    anchors.append(anchor)
                    drawn.append(token)
                    rows.append(len(q_rows))
                q_rows.append(q)
            ends = [end for _, end in sorted(next_ends)]
            if level + 1 < levels:
                compiled = DraftTree(np.array(tokens), np.array(parents)).compile(
                    self.backend.device)
                logits = self.session.verify(context[-1], compiled).clone()
                self.session.truncate(past)
        tree = DraftTree(np.array(tokens), np.array(parents), np.array(scores))
        if self.sampler is None:
            return tree
        depths = [0 if a < 0 else int(tree.depths[a]) for a in anchors]
        return tree.with_draws(Draws(anchors, depths, drawn, rows, torch.stack(q_rows)))


# Weight of a draft model's drafts in the merged tree, against retrieval and context together
# (weighing 1): a draft model's chain ties the heaviest retrieval path. Not tuned yet (issue 16).
DRAFT_MODEL_WEIGHT = 1.0


def merge_draft_model(draft: DraftModelDrafter, sources: "Drafter", *, budget: int | None = None,
                      profile: "CostModel | None" = None,
                      draft_profile: "CostModel | None" = None,
                      calibration: "AcceptanceCalibration | None" = None) -> "Drafter":
    """A draft model's drafts merged with ``sources`` (retrieval + context, as
    :func:`~restdecode.drafting.default_drafter` builds them) into one tree, the draft model
    weighing ``DRAFT_MODEL_WEIGHT``: a path both propose adds up, so a long retrieval match can
    carry the tree past the draft model's ``k`` tokens. The merged tree keeps the draft model's
    nodes on top of ``budget`` (default ``CANDIDATE_BUDGET``).

    * With the target's ``profile`` and the draft model's ``draft_profile`` (the default
      everywhere a latency profile is used): a
      :class:`~restdecode.drafting.draft_planner.PricedDraftModel`, which drafts only as deep
      as the draft model's forwards pay for themselves (down to retrieval alone), then cuts
      the merged tree as the latency planner does (``calibration``: the sources' nodes').
    * With ``profile`` alone: every step drafts ``k`` tokens, and a
      :class:`~restdecode.drafting.PlannedDrafter` cuts the merged tree, pricing only its
      verification.
    * Without: the whole merged tree (:class:`~restdecode.drafting.CombinedDrafter`).

    The planners' score cut drops sampled draws, so under sampling the draft nodes are accepted
    by the deterministic-draft rule (still lossless).
    """
    from restdecode.drafting.combined import CombinedDrafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, STEP_OVERHEAD_S
    from restdecode.drafting.draft_planner import PricedDraftModel
    from restdecode.drafting.planner import PlannedDrafter

    candidates = CANDIDATE_BUDGET if budget is None else budget
    if profile is not None and draft_profile is not None:
        return PricedDraftModel(draft, sources, profile, draft_profile, budget=candidates,
                                weight=DRAFT_MODEL_WEIGHT, calibration=calibration,
                                overhead=STEP_OVERHEAD_S)
    merged = CombinedDrafter([draft, sources], budget=candidates + draft.k * draft.branches,
                             weights=[DRAFT_MODEL_WEIGHT, 1.0])
    if profile is None:
        return merged
    return PlannedDrafter(merged, profile, overhead=STEP_OVERHEAD_S, calibration=calibration)

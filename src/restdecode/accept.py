"""Acceptance: which path of a verified draft tree the model agrees with, plus one bonus token.

Both rules return ``(accepted_slots, tokens)``: ``accepted_slots`` starts with slot 0 (the root,
whose KV entry is always kept) followed by the accepted draft slots, root to leaf; ``tokens`` holds
the drafted tokens of those draft slots followed by the bonus token, so
``len(tokens) == len(accepted_slots)``. The bonus token becomes the next pending token.

* Greedy: at each slot take the argmax; move to the child proposing it, else stop.
* Sampling: multi-draft speculative sampling. At a slot with processed distribution p, the
  residual r starts as p, and
  1. the tokens a drafter *sampled* there (the tree's draws, in the order drawn, duplicates
     included) are tried first: draw x from q is accepted with probability min(1, r(x) / q(x));
     on rejection r = normalise(max(0, r - q)) (SpecInfer's multi-step speculative sampling;
     one draw is Leviathan / Chen's rule). An accepted draw continues at the child proposing it,
     or is the bonus token when the tree has no such child;
  2. then the children in stored order, as deterministic drafts (SpecInfer, Alg. 2): accept child
     x with probability r(x) / sum(r); on rejection set r(x) = 0. (A drawn token already rejected
     has r(x) = 0 here: it is never accepted twice.)
  If every draw and child is rejected (or there is none), the bonus is drawn from what is left.
  Step 1 emits x with probability min(q(x), r(x)) per draw and leaves exactly the residual it
  passes on, whatever was drawn; step 2 emits exactly its input distribution: each emitted token
  is distributed exactly as the model's processed distribution p. This needs the draws at a slot
  to be independent draws from their q, independent of the model's randomness, and the slot's
  presence in the tree not to depend on them (see :mod:`restdecode.drafting.draws`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from restdecode.drafting.tree import CompiledTree


@dataclass(frozen=True)
class Sampler:
    """The processed next-token distribution: temperature, then top-k, then top-p (as in transformers).

    ``top_k = 0`` and ``top_p = 1.0`` disable the filters. The plain decoding step and speculative
    acceptance both draw from :meth:`probs`, so speculation cannot change the output distribution.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Float64 probabilities over the vocabulary for one row of float logits."""
        scores = logits.double() / self.temperature
        if self.top_k > 0 and self.top_k < scores.shape[-1]:
            kth_best = torch.topk(scores, self.top_k).values[-1]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        if self.top_p < 1.0:
            scores = _top_p_filter(scores, self.top_p)
        return torch.softmax(scores, dim=-1)

    def sample(self, logits: torch.Tensor, generator: torch.Generator | None) -> int:
        """One token drawn from :meth:`probs` (the plain, non-speculative step)."""
        return _draw(self.probs(logits), generator)


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    # transformers' TopPLogitsWarper: drop the least likely tokens whose cumulative mass is
    # <= 1 - top_p, always keeping the most likely one.
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[-1] = False
    drop = drop_sorted.scatter(0, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    return int(torch.multinomial(probs, 1, generator=generator))


def accept_greedy(logits: torch.Tensor, tree: CompiledTree) -> tuple[list[int], list[int]]:
    """Longest tree path whose every token is the argmax of its parent slot, plus the bonus argmax."""
    best = logits.argmax(dim=-1).tolist()
    slots, tokens = [0], []
    slot = 0
    while True:
        token = best[slot]
        tokens.append(token)
        child = tree.child_with_token(slot, token)
        if child is None:
            return slots, tokens
        slots.append(child)
        slot = child


def accept_sampling(
    logits: torch.Tensor,
    tree: CompiledTree,
    sampler: Sampler,
    generator: torch.Generator | None,
) -> tuple[list[int], list[int]]:
    """Lossless multi-draft speculative sampling over ``tree`` (see the module docstring)."""
    slots, tokens = [0], []
    slot = 0
    while True:
        full = sampler.probs(logits[slot])
        residual = full.clone()
        token = _try_draws(residual, tree, slot, generator)
        if token is not None:
            child = tree.child_with_token(slot, token)
        else:
            child = _try_children(residual, tree, slot, generator)
            token = (tree.slot_tokens[child] if child is not None
                     else _draw_residual(residual, full, generator))
        tokens.append(token)
        if child is None:
            return slots, tokens
        slots.append(child)
        slot = child


def _try_draws(
    residual: torch.Tensor, tree: CompiledTree, slot: int, generator: torch.Generator | None
) -> int | None:
    """The first of ``slot``'s draws accepted by speculative sampling against its q; on each
    rejection ``residual`` becomes max(0, r - q) (unnormalised) in place."""
    if tree.slot_draws is None:
        return None
    for token, row in tree.slot_draws[slot]:
        mass = float(residual.sum())
        if mass <= 0:
            return None
        q = draft_distribution(tree.draft_probs[row], residual.numel())
        # An id the model lacks has p = 0: never accepted (q is then cut to the model's ids).
        chance = float(residual[token]) / mass / float(q[token]) if token < q.numel() else 0.0
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
            return token
        residual.div_(mass).sub_(q).clamp_(min=0.0)
    return None


def draft_distribution(row: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A stored draft distribution as float64 over the model's ``vocab_size`` ids: normalised
    over its whole row (what it was sampled from), then cut or zero-padded to the model's
    vocabulary (ids the model lacks have p = 0, so they are never accepted either way)."""
    q = row.double()
    q = q / q.sum()
    if q.numel() >= vocab_size:
        return q[:vocab_size]
    return torch.nn.functional.pad(q, (0, vocab_size - q.numel()))


def _try_children(
    residual: torch.Tensor, tree: CompiledTree, slot: int, generator: torch.Generator | None
) -> int | None:
    """The first child accepted by residual rejection sampling; ``residual`` is updated in place."""
    for child in tree.children[slot]:
        token = tree.slot_tokens[child]
        mass = float(residual.sum())
        if mass <= 0:
            return None
        chance = float(residual[token]) / mass
        if float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
            return child
        residual[token] = 0.0
    return None


def _draw_residual(
    residual: torch.Tensor, full: torch.Tensor, generator: torch.Generator | None
) -> int:
    # Rejecting every token with mass is impossible in exact arithmetic (the last one left has
    # probability 1); guard against rounding all the same.
    return _draw(residual if float(residual.sum()) > 0 else full, generator)

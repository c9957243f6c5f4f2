"""Acceptance: which path of a verified draft tree the model agrees with, plus one bonus token.

Both rules return ``(accepted_slots, tokens)``: ``accepted_slots`` starts with slot 0 (the root,
whose KV entry is always kept) followed by the accepted draft slots, root to leaf; ``tokens`` holds
the drafted tokens of those draft slots followed by the bonus token, so
``len(tokens) == len(accepted_slots)``. The bonus token becomes the next pending token.

* Greedy: at each slot take the argmax; move to the child proposing it, else stop.
* Sampling: multi-draft speculative sampling for deterministic drafts (SpecInfer, Alg. 2). At a slot
  with processed distribution p, try the children in stored order: accept child x with probability
  p(x) (p the current residual, normalised); on rejection set p(x) = 0 and renormalise. If every
  child is rejected (or there is none), the bonus is drawn from what is left. Each emitted token is
  then distributed exactly as the model's processed distribution p, whatever the draft.
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
        child = next((c for c in tree.children[slot] if tree.slot_tokens[c] == token), None)
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
        residual = sampler.probs(logits[slot])
        child = _try_children(residual, tree, slot, generator)
        if child is None:
            tokens.append(_draw_residual(residual, sampler.probs(logits[slot]), generator))
            return slots, tokens
        slots.append(child)
        tokens.append(tree.slot_tokens[child])
        slot = child


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

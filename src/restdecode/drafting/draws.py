"""Stochastic drafts: tokens a drafter *sampled* from its own distribution q, kept with that q so
that sampling acceptance can use the rule for random drafts (accept x with probability
min(1, p(x) / q(x))) instead of the rule for deterministic ones.

A :class:`Draws` lists draws in the order they were made. Each draw was made below an
*anchor*: in a :class:`~restdecode.drafting.tree.DraftTree`, a node (``-1``: the root, i.e. the
pending token); in :class:`~restdecode.drafting.base.WeightedContinuations`, the first
``depths[i]`` tokens of continuation ``anchors[i]`` (``-1`` with depth 0: the root). The q rows
are stored once per distribution, not per draw: memory is ``rows x vocab`` float32 (a 150k
vocabulary: 0.6 MB per row), only for the anchors that have draws.

What makes them lossless (see :mod:`restdecode.accept`): the draws below one anchor were drawn
i.i.d. from their rows (or independently from several rows, one per source), independently of
the target model's randomness, and whether the anchor is verified at all does not depend on
them. A cut that looks at scores below an anchor (the latency planner) must drop the draws
(``DraftTree.subset`` does unless told the cut is blind to them); the nodes then count as
deterministic drafts, which is always lossless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class Draws:
    """Draft tokens sampled from draft distributions (module docstring: anchors and order).

    * ``anchors``: (d,) int64, where each draw was made (-1: the root);
    * ``depths``: (d,) int64, depth of that anchor (0: the root);
    * ``tokens``: (d,) int64, the drawn tokens;
    * ``rows``: (d,) int64, the row of ``q`` each token was drawn from;
    * ``q``: (m, vocab) float32 CPU tensor of draft distributions (each row sums to 1 up to
      rounding; acceptance normalises it).
    """

    anchors: np.ndarray
    depths: np.ndarray
    tokens: np.ndarray
    rows: np.ndarray
    q: torch.Tensor

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("anchors", "depths", "tokens", "rows"):
            arrays[name] = np.asarray(getattr(self, name), dtype=np.int64).reshape(-1)
            object.__setattr__(self, name, arrays[name])
        if len({array.size for array in arrays.values()}) != 1:
            raise ValueError(f"draw arrays differ in length: "
                             f"{ {name: array.size for name, array in arrays.items()} }")
        q = torch.as_tensor(self.q, dtype=torch.float32)
        if q.ndim != 2:
            raise ValueError(f"q must be (rows, vocab), got shape {tuple(q.shape)}")
        object.__setattr__(self, "q", q)
        rows, tokens = arrays["rows"], arrays["tokens"]
        if rows.size and (rows.min() < 0 or rows.max() >= q.shape[0]
                          or tokens.min() < 0 or tokens.max() >= q.shape[1]):
            raise ValueError("a draw's row or token lies outside q")
        if rows.size and bool((q[rows, tokens] <= 0).any()):
            raise ValueError("a drawn token has probability 0 in the row it was drawn from")

    def __len__(self) -> int:
        return int(self.tokens.size)

    def select(self, keep: np.ndarray, anchors: np.ndarray) -> "Draws | None":
        """The draws where ``keep`` is true, anchored at ``anchors[keep]`` (renumbered by the
        caller); None when none is left. ``q`` is shared, not copied."""
        keep = np.asarray(keep, dtype=bool)
        if not keep.any():
            return None
        return Draws(np.asarray(anchors)[keep], self.depths[keep], self.tokens[keep],
                     self.rows[keep], self.q)

    def reanchored(self, anchors: np.ndarray) -> "Draws":
        """The same draws at other anchors (same depths)."""
        return Draws(anchors, self.depths, self.tokens, self.rows, self.q)

    def by_slot(self, num_slots: int) -> list[list[tuple[int, int]]]:
        """For each slot of a compiled tree (slot 0 = root, slot i+1 = node i), its draws in
        order as ``(token, q row)``; ``anchors`` must be node indices."""
        slots: list[list[tuple[int, int]]] = [[] for _ in range(num_slots)]
        for anchor, token, row in zip(self.anchors.tolist(), self.tokens.tolist(),
                                      self.rows.tolist()):
            slots[anchor + 1].append((token, row))
        return slots


def concatenate_draws(parts: Sequence[tuple[Draws | None, int]]) -> Draws | None:
    """The draws of several sources in one set, in source order: each ``(draws, offset)`` has
    its non-root anchors shifted by ``offset`` (e.g. the source's first row in a concatenation)
    and its q rows stacked after the previous sources' (padded with zeros to the widest
    vocabulary). None when no source has any."""
    present = [(draws, offset) for draws, offset in parts if draws is not None and len(draws)]
    if not present:
        return None
    if len(present) == 1 and present[0][1] == 0:
        return present[0][0]
    width = max(draws.q.shape[1] for draws, _ in present)
    anchors, q_blocks, rows, row_offset = [], [], [], 0
    for draws, offset in present:
        anchors.append(np.where(draws.anchors < 0, -1, draws.anchors + offset))
        rows.append(draws.rows + row_offset)
        q_blocks.append(torch.nn.functional.pad(draws.q, (0, width - draws.q.shape[1])))
        row_offset += draws.q.shape[0]
    return Draws(np.concatenate(anchors), np.concatenate([d.depths for d, _ in present]),
                 np.concatenate([d.tokens for d, _ in present]), np.concatenate(rows),
                 torch.cat(q_blocks))


def anchor_paths(draws: Draws, continuations: np.ndarray) -> list[tuple[int, ...]]:
    """The token path of each draw's anchor, for draws anchored in ``continuations`` rows
    (the root: the empty path)."""
    return [() if anchor < 0 else tuple(continuations[anchor, :depth].tolist())
            for anchor, depth in zip(draws.anchors.tolist(), draws.depths.tolist())]

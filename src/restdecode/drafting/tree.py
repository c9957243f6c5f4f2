"""The draft tree: what a drafter proposes and what verification consumes.

Conventions (shared by drafting and verification):

* A tree hangs below an implicit **root**, the *pending* token: the last token of the context,
  already chosen but not yet in the model's KV cache.
* Nodes are stored in topological order: ``parents[i] < i``; ``parents[i] == -1`` means the node
  is a child of the root. ``tokens[i]`` is the token the node proposes.
* Compiled, the tree becomes a verification batch of ``1 + n`` **slots**: slot 0 is the root,
  slot ``i + 1`` is node ``i``.  The model's logits at a slot predict the token that follows the
  path root → that slot.
* A tree may also carry :class:`~restdecode.drafting.draws.Draws`: tokens a drafter sampled
  below some nodes, with the distributions it sampled them from (for sampling acceptance;
  verification never reads them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numba
import numpy as np
import torch

from restdecode.drafting.draws import Draws


@dataclass(frozen=True, eq=False)
class DraftTree:
    """Draft tokens arranged as a tree below the pending token.

    ``scores`` is an optional per-node confidence (higher is more likely to be accepted); the
    order of siblings in the arrays is the order in which sampling tries them. ``match_length``
    is the length of the context suffix the drafter matched to find it (0: none, or unknown).
    ``draws`` (optional) are the tokens sampled below some nodes (anchors = node indices, -1 the
    root) with their draft distributions; a draw's token is usually also a child node there,
    but need not be (a cut child can still be accepted, as the bonus token).
    """

    tokens: np.ndarray
    parents: np.ndarray
    scores: np.ndarray | None = None
    match_length: int = 0
    draws: Draws | None = None
    depths: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens, dtype=np.int64).reshape(-1)
        parents = np.asarray(self.parents, dtype=np.int64).reshape(-1)
        if tokens.shape != parents.shape:
            raise ValueError(f"tokens ({tokens.size}) and parents ({parents.size}) differ in length")
        if parents.size and (
            np.any(parents >= np.arange(parents.size)) or np.any(parents < -1)
        ):
            raise ValueError("parents must satisfy -1 <= parents[i] < i (topological order)")
        depths = _depths(parents)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "depths", depths)
        if self.scores is not None:
            object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float64).reshape(-1))
        if self.draws is not None:
            anchors = self.draws.anchors
            if anchors.size and (anchors.min() < -1 or anchors.max() >= tokens.size):
                raise ValueError("a draw is anchored outside the tree")
            anchor_depths = np.where(anchors < 0, 0, depths[np.maximum(anchors, 0)] if tokens.size
                                     else 0)
            if not np.array_equal(anchor_depths, self.draws.depths):
                raise ValueError("the draws' depths are not their anchors' depths")

    @classmethod
    def empty(cls) -> "DraftTree":
        """A tree with no draft: verification degenerates to one plain decoding step."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))

    @classmethod
    def chain(cls, tokens: list[int] | np.ndarray) -> "DraftTree":
        """A single path (what prompt lookup or a draft model proposes)."""
        n = len(tokens)
        return cls(np.asarray(tokens, dtype=np.int64), np.arange(-1, n - 1, dtype=np.int64))

    @classmethod
    def from_continuations(
        cls,
        continuations: np.ndarray,
        lengths: np.ndarray,
        weights: np.ndarray,
        budget: int,
        match_length: int = 0,
    ) -> "DraftTree":
        """The trie of weighted continuations, cut to its ``budget`` heaviest nodes.

        A node's weight is the summed weight of the continuations through it (REST's prefix
        count); the kept nodes are prefix-closed, ordered heaviest first (ties: shallower, then
        first seen), so siblings come heaviest first. ``scores`` = node weight / parent weight
        (depth-1 nodes: / total weight). See ``drafting/trie.py``.
        """
        from restdecode.drafting.trie import heaviest_subtree

        tokens, parents, scores = heaviest_subtree(continuations, lengths, weights, budget)
        return cls(tokens, parents, scores, int(match_length))

    def __len__(self) -> int:
        return int(self.tokens.size)

    @property
    def max_depth(self) -> int:
        return int(self.depths.max()) if len(self) else 0

    def subset(self, keep: np.ndarray, *, blind_to_draws: bool = False) -> "DraftTree":
        """The nodes where ``keep`` is true (a prefix-closed mask), renumbered, order kept.

        The draws below kept nodes stay only with ``blind_to_draws``: when ``keep`` was chosen
        without looking at anything drawn below a kept node (a cut by depth). Otherwise (a cut
        by scores, e.g. the latency planner, which could keep a node *because* of what was
        drawn below it) they are dropped and the nodes count as deterministic drafts.
        """
        keep = np.asarray(keep, dtype=bool)
        draws = self.draws if blind_to_draws else None
        if keep.all() and draws is self.draws:
            return self
        new_index = np.cumsum(keep) - 1
        parents = self.parents[keep]
        parents = np.where(parents < 0, -1, new_index[np.maximum(parents, 0)])
        scores = self.scores[keep] if self.scores is not None else None
        if draws is not None:
            anchors = draws.anchors
            kept_anchor = (anchors < 0) | keep[np.maximum(anchors, 0)]
            draws = draws.select(kept_anchor, np.where(anchors < 0, -1,
                                                        new_index[np.maximum(anchors, 0)]))
        return DraftTree(self.tokens[keep], parents, scores, self.match_length, draws)

    def with_match_length(self, match_length: int) -> "DraftTree":
        """The same tree, found after a context suffix of ``match_length`` tokens."""
        if match_length == self.match_length:
            return self
        return DraftTree(self.tokens, self.parents, self.scores, int(match_length), self.draws)

    def with_draws(self, draws: Draws | None) -> "DraftTree":
        """The same tree carrying ``draws`` (anchored at its nodes) instead of its own."""
        return DraftTree(self.tokens, self.parents, self.scores, self.match_length, draws)

    def node_paths(self) -> list[tuple[int, ...]]:
        """The tokens from the root's child down to each node."""
        paths: list[tuple[int, ...]] = []
        for token, parent in zip(self.tokens.tolist(), self.parents.tolist()):
            paths.append((paths[parent] if parent >= 0 else ()) + (token,))
        return paths

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root's child down to ``node`` (inclusive)."""
        path = []
        while node >= 0:
            path.append(node)
            node = int(self.parents[node])
        return path[::-1]

    @cached_property
    def children(self) -> list[list[int]]:
        """Child *slots* of every slot (slot 0 = root, slot i+1 = node i), in stored order."""
        kids: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for i, parent in enumerate(self.parents.tolist()):
            kids[parent + 1].append(i + 1)
        return kids

    def compile(self, device: torch.device | str = "cpu") -> "CompiledTree":
        """Turn the tree into the tensors one verification forward needs."""
        n = len(self)
        slot_parents = np.concatenate([[-1], self.parents + 1]).astype(np.int64)
        # ancestor[i, j]: slot j is slot i or one of its ancestors (the root is everyone's).
        ancestor = np.zeros((n + 1, n + 1), dtype=bool)
        ancestor[0, 0] = True
        for slot in range(1, n + 1):
            ancestor[slot] = ancestor[slot_parents[slot]]
            ancestor[slot, slot] = True
        depth_offsets = np.concatenate([[0], self.depths])
        return CompiledTree(
            node_tokens=torch.as_tensor(self.tokens, device=device),
            depth_offsets=torch.as_tensor(depth_offsets, device=device),
            ancestor_mask=torch.as_tensor(ancestor, device=device),
            slot_tokens=[-1] + self.tokens.tolist(),
            slot_parents=slot_parents.tolist(),
            children=self.children,
            slot_draws=None if self.draws is None else self.draws.by_slot(n + 1),
            draft_probs=None if self.draws is None else self.draws.q,
        )


def path_probabilities(tree: DraftTree, conditional: np.ndarray) -> np.ndarray:
    """Probability that each node is accepted: the product of ``conditional`` along its path."""
    probabilities = np.empty(len(tree))
    for node, parent in enumerate(tree.parents.tolist()):
        above = probabilities[parent] if parent >= 0 else 1.0
        probabilities[node] = above * conditional[node]
    return probabilities


@numba.njit(cache=True)
def _depths(parents: np.ndarray) -> np.ndarray:
    # A tree is built every decoding step: a Python loop here cost ~0.1 ms per tree.
    depths = np.empty(parents.size, dtype=np.int64)
    for i in range(parents.size):
        depths[i] = 1 if parents[i] < 0 else depths[parents[i]] + 1
    return depths


@dataclass(frozen=True, eq=False)
class CompiledTree:
    """A draft tree as verification buffers (slot 0 = root, slot i+1 = node i).

    * ``node_tokens``: (n,) token ids of the nodes (the root's token is supplied by the decoder);
    * ``depth_offsets``: (n+1,) position of each slot relative to the root's position;
    * ``ancestor_mask``: (n+1, n+1) bool, ``[i, j]`` true when slot i may attend to slot j;
    * ``slot_tokens``/``slot_parents``/``children``: plain Python lists per slot for the accept
      stage (``slot_tokens[0]`` is -1: the root's token is the decoder's pending token);
    * ``slot_draws`` / ``draft_probs``: for the accept stage only, None when nothing was
      sampled: per slot, the ``(token, row)`` draws made below it in order, and the
      ``(rows, vocab)`` float32 draft distributions they were drawn from.
    """

    node_tokens: torch.Tensor
    depth_offsets: torch.Tensor
    ancestor_mask: torch.Tensor
    slot_tokens: list[int]
    slot_parents: list[int]
    children: list[list[int]]
    slot_draws: list[list[tuple[int, int]]] | None = None
    draft_probs: torch.Tensor | None = None

    def child_with_token(self, slot: int, token: int) -> int | None:
        """The first child slot of ``slot`` proposing ``token``, None if none does."""
        return next((c for c in self.children[slot] if self.slot_tokens[c] == token), None)

    @property
    def num_slots(self) -> int:
        return len(self.slot_parents)

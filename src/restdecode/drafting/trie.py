"""Weighted continuations -> the heaviest prefix-closed subtree of their trie.

This runs once per decoding step on up to thousands of continuations, so the trie is built by
numba kernels in one pass over the rows:

* rows already in lexicographic order (what the datastore returns): each row shares its longest
  common prefix with the previous row, so only the path of the previous row is needed;
* otherwise: an open-addressing hash table keyed by ``(parent node, token)``.

Both give node ids in first-seen order (for sorted rows the two coincide), which is topological:
a node is always created after its parent.

Selection keeps the ``budget`` heaviest nodes ordered by ``(-weight, depth, first-seen id)``.
Weights never increase along a path (a child's continuations are a subset of its parent's), and
on equal weight the parent is shallower, so every kept node's parent ranks before it: the kept
set is prefix-closed, and listing it in rank order is a topological order with siblings
heaviest first.
"""

from __future__ import annotations

import numba
import numpy as np

_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: keep the product's top bits


@numba.njit(cache=True)
def _table_bits(num_entries: int) -> int:
    bits = 4
    while (1 << bits) < 2 * num_entries:
        bits += 1
    return bits


@numba.njit(cache=True)
def _max_nodes(lengths, weights, width) -> int:
    """Upper bound on the trie's nodes: the tokens of the rows that count."""
    total = 0
    for i in range(lengths.size):
        if weights[i] > 0:
            total += min(max(lengths[i], 0), width)
    return total


@numba.njit(cache=True)
def _build_weighted_trie(continuations, lengths, weights):
    """All prefixes of the rows as trie nodes: (tokens, parents, depths, node weights).

    Rows with a non-positive weight or length contribute nothing. The ``-1`` parent means
    "child of the root". A node's weight is the summed weight of the rows through it.
    The hash table holds int32 node ids only (small enough to stay in cache); a slot's key,
    ``(parent + 1) << 32 | token``, is read from the node.
    """
    num_rows, width = continuations.shape
    max_nodes = _max_nodes(lengths, weights, width)
    bits = _table_bits(max_nodes)
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    table = np.full(1 << bits, -1, dtype=np.int32)

    keys = np.empty(max_nodes, dtype=np.int64)
    tokens = np.empty(max_nodes, dtype=np.int64)
    parents = np.empty(max_nodes, dtype=np.int64)
    depths = np.empty(max_nodes, dtype=np.int64)
    node_weights = np.empty(max_nodes, dtype=np.float64)
    num_nodes = 0
    for i in range(num_rows):
        weight = weights[i]
        if not weight > 0:
            continue
        parent = -1
        for d in range(min(lengths[i], width)):
            token = continuations[i, d]
            key = ((parent + 1) << 32) | (token & 0xFFFFFFFF)
            slot = np.int64((np.uint64(key) * _HASH_MULTIPLIER) >> shift)
            node = table[slot]
            while node >= 0 and keys[node] != key:
                slot = (slot + 1) & mask
                node = table[slot]
            if node >= 0:
                node_weights[node] += weight
            else:
                node = num_nodes
                num_nodes += 1
                table[slot] = node
                keys[node] = key
                tokens[node] = token
                parents[node] = parent
                depths[node] = d + 1
                node_weights[node] = weight
            parent = node
    return tokens[:num_nodes], parents[:num_nodes], depths[:num_nodes], node_weights[:num_nodes]


@numba.njit(cache=True)
def _common_prefix_length(continuations, a, length_a, b, length_b) -> int:
    limit = min(length_a, length_b)
    depth = 0
    while depth < limit and continuations[a, depth] == continuations[b, depth]:
        depth += 1
    return depth


@numba.njit(cache=True)
def _build_weighted_trie_of_sorted(continuations, lengths, weights):
    """Like ``_build_weighted_trie`` for rows in lexicographic order (a prefix before its
    extensions); the first flag is False, and the rest meaningless, when the rows are not sorted.
    """
    num_rows, width = continuations.shape
    max_nodes = _max_nodes(lengths, weights, width)
    tokens = np.empty(max_nodes, dtype=np.int64)
    parents = np.empty(max_nodes, dtype=np.int64)
    depths = np.empty(max_nodes, dtype=np.int64)
    node_weights = np.empty(max_nodes, dtype=np.float64)
    path = np.empty(width, dtype=np.int64)  # node ids along the previous row
    num_nodes = 0
    previous_row, previous_length = -1, 0
    for i in range(num_rows):
        weight = weights[i]
        length = min(lengths[i], width)
        if not weight > 0 or length <= 0:
            continue
        shared = 0
        if previous_row >= 0:
            shared = _common_prefix_length(continuations, previous_row, previous_length, i, length)
            if shared == length and length < previous_length:
                return False, tokens[:0], parents[:0], depths[:0], node_weights[:0]
            if shared < length and shared < previous_length:
                if continuations[previous_row, shared] > continuations[i, shared]:
                    return False, tokens[:0], parents[:0], depths[:0], node_weights[:0]
        for d in range(shared):
            node_weights[path[d]] += weight
        for d in range(shared, length):
            tokens[num_nodes] = continuations[i, d]
            parents[num_nodes] = path[d - 1] if d > 0 else -1
            depths[num_nodes] = d + 1
            node_weights[num_nodes] = weight
            path[d] = num_nodes
            num_nodes += 1
        previous_row, previous_length = i, length
    return (
        True, tokens[:num_nodes], parents[:num_nodes], depths[:num_nodes], node_weights[:num_nodes]
    )


@numba.njit(cache=True)
def _ranks_before(weights, depths, a, b) -> bool:
    """Whether node ``a`` ranks before node ``b``: heavier, then shallower, then first seen."""
    if weights[a] != weights[b]:
        return weights[a] > weights[b]
    if depths[a] != depths[b]:
        return depths[a] < depths[b]
    return a < b


@numba.njit(cache=True)
def _heaviest_nodes(weights, depths, budget):
    """Ids of the ``budget`` best-ranked nodes, best first (a bounded insertion sort).

    A node that does not beat the current last kept node is skipped in O(1), so the cost is
    O(nodes) plus O(budget) per node that enters the kept list.
    """
    kept = np.empty(min(budget, weights.size), dtype=np.int64)
    count = 0
    for node in range(weights.size):
        if count == kept.size:
            if not _ranks_before(weights, depths, node, kept[count - 1]):
                continue
            count -= 1
        position = count
        while position > 0 and _ranks_before(weights, depths, node, kept[position - 1]):
            kept[position] = kept[position - 1]
            position -= 1
        kept[position] = node
        count += 1
    return kept[:count]


@numba.njit(cache=True)
def _clamp_to_parent_weight(parents, weights):
    """Make weights non-increasing along paths (guards against float rounding in the sums)."""
    for node in range(parents.size):
        parent = parents[node]
        if parent >= 0 and weights[node] > weights[parent]:
            weights[node] = weights[parent]


@numba.njit(cache=True)
def _select_subtree(tokens, parents, depths, weights, total_weight, budget):
    """Keep the heaviest ``budget`` nodes; re-index parents; score = weight / parent weight."""
    _clamp_to_parent_weight(parents, weights)
    kept = _heaviest_nodes(weights, depths, budget)
    new_index = np.full(tokens.size, -1, dtype=np.int64)
    for position in range(kept.size):
        new_index[kept[position]] = position
    out_tokens = np.empty(kept.size, dtype=np.int64)
    out_parents = np.empty(kept.size, dtype=np.int64)
    out_scores = np.empty(kept.size, dtype=np.float64)
    for position in range(kept.size):
        node = kept[position]
        parent = parents[node]
        out_tokens[position] = tokens[node]
        out_parents[position] = -1 if parent < 0 else new_index[parent]
        parent_weight = total_weight if parent < 0 else weights[parent]
        out_scores[position] = weights[node] / parent_weight
    return out_tokens, out_parents, out_scores


@numba.njit(cache=True)
def _total_weight(lengths, weights, width) -> float:
    total = 0.0
    for i in range(weights.size):
        if weights[i] > 0 and min(lengths[i], width) > 0:
            total += weights[i]
    return total


def heaviest_subtree(
    continuations: np.ndarray, lengths: np.ndarray, weights: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``budget`` heaviest nodes of the trie of weighted continuations.

    Args:
        continuations: (n, L) token ids in ``[0, 2**32)``, padded after each row's end (the
            padding is ignored).
        lengths: (n,) true length of each row (clipped to ``L``); rows of length 0 are ignored.
        weights: (n,) weight of each row; rows with weight <= 0 are ignored. Identical rows add up.
        budget: maximum number of nodes kept.

    Returns:
        ``(tokens, parents, scores)`` in topological order (``parents[i] < i``, ``-1`` = child of
        the root), siblings heaviest first; ``scores[i]`` = node weight / parent weight (for
        depth-1 nodes: / total weight).
    """
    continuations = np.ascontiguousarray(continuations, dtype=np.int64)
    if continuations.ndim != 2:
        raise ValueError(f"continuations must be 2-D (n, L), got shape {continuations.shape}")
    lengths = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
    weights = np.ascontiguousarray(weights, dtype=np.float64).reshape(-1)
    if not lengths.size == weights.size == continuations.shape[0]:
        raise ValueError(
            f"{continuations.shape[0]} continuations, {lengths.size} lengths, {weights.size} weights"
        )
    if budget <= 0 or continuations.shape[0] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=np.float64)
    # Three kernel calls from Python: measured faster than one kernel calling the three (the
    # fused function compiles to a slower hash loop).
    is_sorted, tokens, parents, depths, node_weights = _build_weighted_trie_of_sorted(
        continuations, lengths, weights
    )
    if not is_sorted:
        tokens, parents, depths, node_weights = _build_weighted_trie(continuations, lengths, weights)
    total_weight = _total_weight(lengths, weights, continuations.shape[1])
    return _select_subtree(tokens, parents, depths, node_weights, total_weight, int(budget))

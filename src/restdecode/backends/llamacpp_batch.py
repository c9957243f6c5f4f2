"""Batched tree verification on the llama.cpp backend: many rows, one ``llama_decode``.

llama.cpp batches sequences natively, so the batch is the single-row scheme
(:mod:`restdecode.backends.llamacpp`) once per row, in one ``llama_batch``:

* each row owns a *main* sequence id holding its past (prompt and accepted tokens) in the
  context's unified KV cache; rows never share a sequence, so llama.cpp's mask keeps every row's
  attention inside its own cells;
* a verification gives each row one sequence per leaf of its tree: the main one, and spare ids
  taken from a shared pool and pointed at the row's past with ``llama_memory_seq_cp`` (no data
  copied); each slot belongs to the sequences of the leaves below it, at position
  ``past + depth``;
* committing a row keeps the sequence through its last accepted slot, cut after the accepted
  depth (``llama_memory_seq_rm``), and removes the row's other sequences from every cell
  (``seq_rm`` over all positions: ``seq_keep`` would drop the other rows too); their ids go back
  to the pool.

Limits: all rows share the context's ``n_ctx`` cells (a unified cache), and one forward holds
at most :data:`~restdecode.backends.llamacpp.BATCH` tokens and
:data:`~restdecode.backends.llamacpp.MAX_SEQUENCES` sequences (rows plus extra leaves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from restdecode.backends.llamacpp import MAX_SEQUENCES, _leaf_membership
from restdecode.errors import DecodingError

if TYPE_CHECKING:
    from restdecode.backends.llamacpp import LlamaCppBackend
    from restdecode.drafting.tree import CompiledTree


@dataclass
class _Row:
    main: int              # the sequence id holding the row's past
    past_length: int
    # Set by verify, cleared by commit:
    sequences: list[int] = field(default_factory=list)       # the row's sequences in the forward
    slot_sequences: list[int] = field(default_factory=list)  # first sequence of each slot
    first_slot: int = 0    # the row's first slot in the forward's logits
    num_slots: int = 0


class LlamaCppBatchSession:
    """Several sequences ("rows") on one :class:`LlamaCppBackend` context, verified in one
    ``llama_decode`` (see the module docstring). Implements
    :class:`restdecode.backends.BatchSession`. It takes the context over, as a new single-row
    session does."""

    def __init__(self, backend: "LlamaCppBackend") -> None:
        self.backend = backend
        self._rows: dict[int, _Row] = {}
        self._free = list(range(MAX_SEQUENCES - 1, -1, -1))  # a stack: lowest id on top
        self._next_row = 0
        self._pending: set[int] = set()  # rows of the last verify not committed yet

    def _memory(self):
        if self.backend._active is not self:
            raise DecodingError("this llama.cpp batch session was superseded by a newer session "
                                "on the same backend (one context at a time)")
        return self.backend._memory

    @property
    def rows(self) -> list[int]:
        """The rows in the session, in the order they joined."""
        return list(self._rows)

    def past_length(self, row: int) -> int:
        """Positions ``row`` holds in the cache (its context without the pending token)."""
        return self._row(row).past_length

    @property
    def cache_length(self) -> int:
        """Cells the rows' pasts hold together (outside a step)."""
        return sum(row.past_length for row in self._rows.values())

    @property
    def capacity(self) -> int:
        """The context's cells, which every row's past and every step's slots share."""
        return self.backend.n_ctx

    def add_row(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """A new row holding ``prompt_ids`` (decoded alone, in chunks); its id and float32
        logits ``(vocab,)`` after the prompt's last token."""
        self._check_no_step("add a row")
        ids = np.asarray(prompt_ids, dtype=np.int32)
        if ids.size == 0:
            raise DecodingError("a row needs at least one prompt token")
        self._check_room(ids.size)
        memory, sequence = self._memory(), self._take_sequences(1)[0]
        batch = self.backend._batch
        try:
            for start in range(0, len(ids), batch.capacity):
                chunk = ids[start:start + batch.capacity]
                batch.fill_chain(chunk, start, want_last=start + len(chunk) == len(ids))
                batch.sequences[:len(chunk), 0] = sequence
                logits = self.backend.decode(batch)
        except DecodingError:
            self.backend._lib.llama_memory_seq_rm(memory, sequence, -1, -1)
            self._free.append(sequence)
            raise
        row = self._next_row
        self._next_row += 1
        self._rows[row] = _Row(main=sequence, past_length=len(ids))
        return row, torch.from_numpy(logits[-1].copy())

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, torch.Tensor]]:
        """Rows for ``prompts``, each prefilled as :meth:`add_row` does, one after another; if
        one fails, the rows added before it are removed again (none of the prompts joins).

        Packing several prompts into one ``llama_decode`` (a sequence each) was measured and is
        not faster: a prompt already runs llama.cpp's batched matmuls, and a packed call's
        attention spans all of its cells (SmolLM2 Q4_1, 2 cores, 8 MT-Bench prompts: 1.71 s
        packed against 1.67 s one by one; bench/RESULTS.md)."""
        self._check_no_step("add rows")
        if not all(len(prompt) for prompt in prompts):
            raise DecodingError("a row needs at least one prompt token")
        added: list[tuple[int, torch.Tensor]] = []
        try:
            for prompt in prompts:
                added.append(self.add_row(prompt))
        except BaseException:
            for row, _ in added:
                self.remove_row(row)
            raise
        return added

    def verify(self, items: Sequence[tuple[int, int, "CompiledTree"]]) -> list[torch.Tensor]:
        """For each ``(row, pending_token, tree)`` (distinct rows), float32 logits
        ``(1 + n_row, vocab)`` at every slot of the row's tree, from one ``llama_decode``. The
        results are views of llama.cpp's output buffer: valid until the next call."""
        self._check_no_step("verify")
        if not items:
            return []
        lib, memory = self.backend._lib, self._memory()
        if len({row for row, _, _ in items}) != len(items):
            raise DecodingError("a row appears twice in one verification")
        shapes = [(self._row(row), _leaf_membership(tree)) for row, _, tree in items]
        slots = sum(tree.num_slots for _, _, tree in items)
        if slots > self.backend._batch.capacity:
            raise DecodingError(f"{slots} tokens in one forward exceed the llama.cpp backend's "
                                f"batch of {self.backend._batch.capacity}")
        extra = sum(len(leaves) - 1 for _, (_, leaves) in shapes)
        if extra > len(self._free):
            raise DecodingError(f"the trees need {extra} more llama.cpp sequences than the "
                                f"{len(self._free)} left ({MAX_SEQUENCES} in all)")
        self._check_room(slots)
        tokens, positions, sequence_ids, memberships = [], [], [], []
        first_slot = 0
        for (row, (membership, leaves)), (_, pending, tree) in zip(shapes, items):
            row.sequences = [row.main] + self._take_sequences(len(leaves) - 1)
            for sequence in row.sequences[1:]:
                lib.llama_memory_seq_cp(memory, row.main, sequence, -1, -1)
            tokens += [np.array([pending], dtype=np.int32), tree.node_tokens.numpy()]
            positions.append(row.past_length + tree.depth_offsets.numpy())
            sequence_ids += row.sequences
            memberships.append(membership)
            row.first_slot, row.num_slots = first_slot, tree.num_slots
            first_slot += tree.num_slots
        batch = self.backend._batch
        first = batch.fill_tree(np.concatenate(tokens).astype(np.int32),
                                np.concatenate(positions), _block_diagonal(memberships),
                                sequence_ids)
        logits = torch.from_numpy(self.backend.decode(batch))
        results = []
        for (row, _), (row_id, _, _) in zip(shapes, items):
            span = slice(row.first_slot, row.first_slot + row.num_slots)
            row.slot_sequences = first[span]
            self._pending.add(row_id)
            results.append(logits[span])
        return results

    def commit(self, row: int, accepted_slots: Sequence[int]) -> None:
        """Keep the KV cells of ``row``'s ``accepted_slots`` (slot 0 first, then a root-to-node
        path; empty: keep none) of the last ``verify``; its past length grows by their number."""
        state = self._row(row)
        if row not in self._pending:
            raise DecodingError(f"row {row} has no uncommitted verification")
        slots = [int(s) for s in accepted_slots]
        if slots and (slots[0] != 0 or max(slots) >= state.num_slots):
            raise DecodingError(f"accepted slots {slots} do not start at slot 0 of row {row}'s tree")
        lib, memory = self.backend._lib, self._memory()
        keep = state.slot_sequences[slots[-1]] if slots else state.main
        lib.llama_memory_seq_rm(memory, keep, state.past_length + len(slots), -1)
        for sequence in state.sequences:
            if sequence != keep:
                lib.llama_memory_seq_rm(memory, sequence, -1, -1)
                self._free.append(sequence)
        state.main, state.sequences, state.slot_sequences = keep, [], []
        state.past_length += len(slots)
        self._pending.discard(row)

    def remove_row(self, row: int) -> None:
        """Drop ``row`` and every KV cell it holds (also its slots of an uncommitted step)."""
        state = self._row(row)
        lib, memory = self.backend._lib, self._memory()
        for sequence in dict.fromkeys([state.main, *state.sequences]):
            lib.llama_memory_seq_rm(memory, sequence, -1, -1)
            self._free.append(sequence)
        del self._rows[row]
        self._pending.discard(row)

    # -- internals --------------------------------------------------------------------------

    def _row(self, row: int) -> _Row:
        if row not in self._rows:
            raise DecodingError(f"no row {row} in this batch session")
        return self._rows[row]

    def _check_no_step(self, doing: str) -> None:
        if self._pending:
            raise DecodingError(f"cannot {doing}: rows {sorted(self._pending)} of the last "
                                f"verification are not committed yet")

    def _check_room(self, tokens: int) -> None:
        """The rows share the context's cells: refuse what would not fit."""
        if self.cache_length + tokens > self.backend.n_ctx:
            raise DecodingError(f"the batch would hold {self.cache_length + tokens} positions; "
                                f"the llama.cpp context has {self.backend.n_ctx} for all rows "
                                f"together (load the backend with a larger n_ctx)")

    def _take_sequences(self, count: int) -> list[int]:
        if count > len(self._free):
            raise DecodingError(f"no free llama.cpp sequence left ({MAX_SEQUENCES} in all)")
        return [self._free.pop() for _ in range(count)]


def _block_diagonal(memberships: list[np.ndarray]) -> np.ndarray:
    """One ``(slots, leaves)`` membership for all rows: each row's slots are members of its own
    leaves' sequences only."""
    slots = sum(m.shape[0] for m in memberships)
    leaves = sum(m.shape[1] for m in memberships)
    joined = np.zeros((slots, leaves), dtype=bool)
    row, column = 0, 0
    for membership in memberships:
        joined[row:row + membership.shape[0], column:column + membership.shape[1]] = membership
        row, column = row + membership.shape[0], column + membership.shape[1]
    return joined

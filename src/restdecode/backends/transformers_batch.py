"""Batched tree verification on the transformers backend: many rows, one forward, a packed cache.

Layout (docs/architecture.md, "batched decoding", says why): the batch is *one* sequence to the
model (batch dimension 1), as in llama.cpp's unified KV cache. Every row's past KV entries live
in one :class:`~transformers.DynamicCache`, in no particular order, each entry labelled with its
row and its position (``_owner``, ``_positions``). A verification forward appends the slots of
every row's tree at once (``sum(1 + n_r)`` tokens, no padding) with per-token ``position_ids``
and an additive 4D mask in which a slot sees only

* its own row's past entries (and, in a sliding-window layer, only those with
  ``key position > query position - window``), and
* its own tree ancestors (same window rule),

so each row's slots compute what that row's single-row verification computes: attention to the
other rows' keys gets weight exactly 0. Sliding-window layers keep every past entry (the window
is applied by the mask, per row): a plain :class:`DynamicLayer` per layer, no trimming.

A row joins with its own prefill (a cache of its own, the prompt alone, as a single-row session
prefills), whose entries are then appended to the packed cache; running rows are not touched.
``commit(row, slots)`` records a row's accepted slots; once every row of the last forward is
committed (or removed), the accepted slots are gathered right after the past and the rest of the
forward's tail is dropped. ``remove_row`` drops a row's entries from every layer at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from restdecode import verify as tree_verify
from restdecode.compiled import eager
from restdecode.errors import DecodingError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from restdecode.drafting.tree import CompiledTree


@dataclass
class _Pending:
    """A row's slots in the tail of the last verification forward."""

    start: int      # first slot's index in the forward's tail
    num_slots: int
    length: int     # the row's past length when verified (slot 0's position)
    accepted: list[int] | None = None


class TransformersBatchSession:
    """Several sequences ("rows") of one transformers model, verified together (see the module
    docstring). Implements :class:`restdecode.backends.BatchSession`."""

    def __init__(self, model: "PreTrainedModel") -> None:
        tree_verify._check_supported(model)
        self.model = model
        self._layer_types = tree_verify._layer_types(model)
        config = model.config.get_text_config(decoder=True)
        self._windows = {tree_verify.FULL: None}
        if tree_verify.SLIDING in self._layer_types:
            self._windows[tree_verify.SLIDING] = int(config.sliding_window)
        self.cache = DynamicCache()  # one DynamicLayer per layer: sliding layers keep all
        device = model.device
        self._owner = torch.zeros(0, dtype=torch.long, device=device)      # row of each entry
        self._positions = torch.zeros(0, dtype=torch.long, device=device)  # position of each entry
        self._lengths: dict[int, int] = {}
        self._next_row = 0
        self._pending: dict[int, _Pending] = {}
        self._tail = 0  # slots of the last forward still in the cache, awaiting commits

    # -- rows -------------------------------------------------------------------------------

    @property
    def rows(self) -> list[int]:
        """The rows in the session, in the order they joined."""
        return list(self._lengths)

    def past_length(self, row: int) -> int:
        """Positions row ``row`` holds in the cache (its context without the pending token)."""
        return self._lengths[self._row(row)]

    @property
    def cache_length(self) -> int:
        """KV entries per layer in the packed cache (the sum of the rows' past lengths, outside a
        step)."""
        return int(self._owner.numel()) + self._tail

    def add_row(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """A new row holding ``prompt_ids``; float32 logits ``(vocab,)`` after its last token.

        The prompt is run alone, into a cache of its own (other rows are not part of this
        forward), and its entries are then appended to the packed cache."""
        self._check_no_step("add a row")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise DecodingError("a row needs at least one prompt token")
        own = DynamicCache()
        input_ids = torch.tensor([prompt], device=self.model.device)
        output = eager(self.model)(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                                   **tree_verify.cache_kwargs(self.model, own))
        row = self._next_row
        self._next_row += 1
        for index, layer in enumerate(own.layers):
            self._append(index, layer.keys, layer.values)
        device = self._owner.device
        self._owner = torch.cat([self._owner, torch.full((len(prompt),), row, device=device)])
        self._positions = torch.cat([self._positions, torch.arange(len(prompt), device=device)])
        self._lengths[row] = len(prompt)
        return row, output.logits[0, -1].float()

    def remove_row(self, row: int) -> None:
        """Drop ``row`` and every KV entry it holds (also its slots of an uncommitted step)."""
        self._row(row)
        del self._lengths[row]
        if row in self._pending:
            del self._pending[row]
            self._finish_step_if_committed()
        keep = torch.nonzero(self._owner != row).squeeze(1)
        if keep.numel() == self._owner.numel():
            return
        if self._tail:  # mid-step: the other rows' slots stay where they are
            tail = torch.arange(self._owner.numel(), self.cache_length, device=keep.device)
            index = torch.cat([keep, tail])
        else:
            index = keep
        for layer in self._layers():
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
        # The tail's slot indices are relative to the tail's start: unchanged.
        self._owner, self._positions = self._owner[keep], self._positions[keep]

    # -- a step -----------------------------------------------------------------------------

    def verify(self, items: Sequence[tuple[int, int, "CompiledTree"]]) -> list[torch.Tensor]:
        """Float32 logits ``(1 + n_r, vocab)`` for each ``(row, pending_token, tree)`` of
        ``items`` (distinct rows), from one forward. Each row is then resolved by
        :meth:`commit` (or :meth:`remove_row`) before the next forward."""
        self._check_no_step("verify")
        if not items:
            return []
        device = self.model.device
        tokens, query_row, query_pos, blocks, start = [], [], [], [], 0
        for row, pending, tree in items:
            self._row(row)
            if row in self._pending:
                raise DecodingError(f"row {row} appears twice in one verification")
            length = self._lengths[row]
            self._pending[row] = _Pending(start, tree.num_slots, length)
            start += tree.num_slots
            tokens.append(torch.tensor([pending], device=device))
            tokens.append(tree.node_tokens.to(device))
            query_row.append(torch.full((tree.num_slots,), row, device=device))
            query_pos.append(length + tree.depth_offsets.to(device))
            blocks.append(tree.ancestor_mask.to(device))
        query_row, query_pos = torch.cat(query_row), torch.cat(query_pos)
        mask = self._mask(query_row, query_pos, torch.block_diag(*blocks))
        self._tail = start
        output = self.model(
            input_ids=torch.cat(tokens).unsqueeze(0),
            attention_mask=mask,
            position_ids=query_pos.unsqueeze(0),
            use_cache=True,
            **tree_verify.cache_kwargs(self.model, self.cache),
        )
        logits = output.logits[0].float()
        bounds = [self._pending[row].start for row, _, _ in items] + [start]
        return [logits[a:b] for a, b in zip(bounds, bounds[1:])]

    def commit(self, row: int, accepted_slots: Sequence[int]) -> None:
        """Keep the KV entries of ``accepted_slots`` (slot 0 first, then a root-to-node path; or
        none, to drop the whole tree) of ``row``'s tree in the last forward; its past length
        grows by their number. The cache is compacted once every row of that forward is
        committed or removed."""
        pending = self._pending.get(self._row(row))
        if pending is None or pending.accepted is not None:
            raise DecodingError(f"row {row} has no uncommitted verification")
        slots = [int(s) for s in accepted_slots]
        if slots and (slots[0] != 0 or max(slots) >= pending.num_slots):
            raise DecodingError(f"accepted slots {slots} do not start at slot 0 of row {row}'s tree")
        pending.accepted = slots
        self._finish_step_if_committed()

    # -- internals --------------------------------------------------------------------------

    def _row(self, row: int) -> int:
        if row not in self._lengths:
            raise DecodingError(f"no row {row} in this batch session")
        return row

    def _check_no_step(self, doing: str) -> None:
        if self._pending:
            rows = sorted(self._pending)
            raise DecodingError(f"cannot {doing}: rows {rows} of the last verification are not "
                                f"committed yet")

    def _layers(self):
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", False)]

    def _append(self, index: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.cache.update(keys, values, index)

    def _finish_step_if_committed(self) -> None:
        """Once every row of the last forward is resolved: gather the accepted slots of every
        row right after the past (in row order), drop the rest of the tail."""
        if any(p.accepted is None for p in self._pending.values()):
            return
        past = int(self._owner.numel())
        device = self._owner.device
        index, owner, positions = [], [], []
        for row, pending in self._pending.items():
            index.append(torch.tensor(pending.accepted, dtype=torch.long, device=device)
                         + pending.start)
            owner.append(torch.full((len(pending.accepted),), row, device=device))
            positions.append(pending.length + torch.arange(len(pending.accepted), device=device))
            self._lengths[row] += len(pending.accepted)
        kept = int(sum(len(p.accepted) for p in self._pending.values()))
        if self._tail:
            tail_index = torch.cat(index) if index else torch.zeros(0, dtype=torch.long,
                                                                     device=device)
            is_prefix = tail_index.tolist() == list(range(kept))
            for layer in self._layers():
                if not is_prefix:
                    # The accepted slots are gathered into place inside the existing buffers:
                    # only the tail is copied, never the past.
                    source = tail_index + past
                    layer.keys[..., past:past + kept, :] = layer.keys.index_select(-2, source)
                    layer.values[..., past:past + kept, :] = layer.values.index_select(-2, source)
                layer.keys = layer.keys[..., :past + kept, :]
                layer.values = layer.values[..., :past + kept, :]
        if owner:
            self._owner = torch.cat([self._owner, *owner])
            self._positions = torch.cat([self._positions, *positions])
        self._pending.clear()
        self._tail = 0

    def _mask(self, query_row: torch.Tensor, query_pos: torch.Tensor,
              ancestors: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The additive mask(s) ``(1, 1, Q, past + Q)``: own row's past, own tree ancestors;
        sliding layers also ``key position > query position - window``."""
        own_past = self._owner.unsqueeze(0) == query_row.unsqueeze(1)
        visible = torch.cat([own_past, ancestors], dim=1)
        key_pos = torch.cat([self._positions, query_pos])
        masks = {}
        for layer_type in dict.fromkeys(self._layer_types):
            window = self._windows[layer_type]
            seen = visible
            if window is not None:
                seen = visible & (key_pos.unsqueeze(0) > query_pos.unsqueeze(1) - window)
            masks[layer_type] = tree_verify._additive(seen, self.model.dtype)
        if set(masks) == {tree_verify.FULL}:
            return masks[tree_verify.FULL]
        return masks

"""Batched tree verification on the transformers backend: many rows, one forward, one region each.

Layout (docs/architecture.md, "batched decoding", says why). Every token of a step goes through
the model's projections and MLPs *packed*: one sequence of ``sum(1 + n_r)`` tokens (batch
dimension 1, no padding), with per-token ``position_ids``. Only attention is per row:

* the KV cache holds one contiguous **region** per row, ``(regions, kv_heads, capacity,
  head_dim)`` per layer; column c of a row's region is the row's position c, and a step writes
  each row's tree slots right after its past (slot j at column ``past + j``);
* attention (:func:`rows_attention`, an attention function registered with transformers and used
  for the batched forward only) runs two SDPA calls per layer, each over zero-padded query
  blocks with a per-row mask (a slot sees its row's past and its own tree ancestors; in a
  sliding-window layer only keys with ``key position > query position - window``): every row's
  slot 0 (its pending token), one query per region against every region's first ``longest``
  columns (a view, nothing copied), which is what plain batched decoding costs; then the tree
  slots of the rows that have a tree, padded to the widest tree, against those rows' regions only
  (gathered when they are few); trees of about one width share one call instead. Each row's
  queries meet only its own keys: the work is about
  ``regions x longest + trees x widest x longest``, not ``(all slots) x (all rows' keys)`` as in
  one packed sequence, and one deep tree does not pad every other row's queries.

``commit(row, slots)`` records a row's accepted slots; once every row of the last forward is
committed (or removed), the accepted slots that are not already in place (a path off the first
branch) are moved to ``past, past + 1, ...`` in one gather per layer. Columns past a row's length
are stale and never seen. A row joins with its own prefill (the prompt alone, as a single-row
session prefills), copied into a free region; rows joining together (``add_rows``) are
prefilled in one forward, each prompt verified as a chain straight into its region, and rows
joining running ones (``verify_joining``) ride in a step's forward the same way;
``remove_row`` frees the region. Regions and
capacity grow by doubling (one copy of the cache) when a row or a tree does not fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface, DynamicCache

from restdecode import verify as tree_verify
from restdecode.compiled import eager
from restdecode.drafting.tree import DraftTree
from restdecode.errors import DecodingError
from restdecode.head import padded_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from restdecode.drafting.tree import CompiledTree

ROWS_ATTENTION = "restdecode_rows"
INITIAL_CAPACITY = 256  # positions per region before the first doubling
# add_rows packs prompts up to this long into one forward (attention pads each to the longest).
PACKED_PREFILL_TOKENS = 512


@dataclass
class StepLayout:
    """Where one batched forward's packed tokens live, read by :class:`RegionCache` (writes) and
    :func:`rows_attention` (reads). Built by :meth:`TransformersBatchSession.verify`."""

    region: torch.Tensor       # (Q,) region of each packed token
    column: torch.Tensor       # (Q,) its column in the region (past length + slot)
    longest: int               # columns any row's queries may see (max of past + slots)
    layer_types: list[str]
    # Trees of about one width: every slot in one block of (regions x widest), these masks
    # (layer type -> bool (regions, 1, widest, longest)); None: the two groups below.
    slot: torch.Tensor
    masks: dict[str, torch.Tensor] | None
    dense: bool                # the packed tokens are that block itself, row-major (no padding)
    # Every row's slot 0 (its pending token), one query per region:
    first: torch.Tensor        # (B,) packed index of each row's slot 0
    first_region: torch.Tensor  # (B,) its region
    first_masks: dict[str, torch.Tensor]  # layer type -> bool (regions, 1, 1, longest)
    first_dense: bool          # every region holds a row of this step, in region order
    # The tree slots (1 and up) of the rows that have a tree, one call per group (draft trees;
    # prompts riding in the step as chains), each padded to its widest:
    groups: list["NodeGroup"]


@dataclass
class NodeGroup:
    """Tree slots attended in one SDPA call, padded to the group's widest tree."""

    nodes: torch.Tensor        # (n,) packed index of each tree slot
    node_row: torch.Tensor     # (n,) its row in the block of the group's regions
    node_slot: torch.Tensor    # (n,) its slot - 1
    regions: torch.Tensor | None  # (T,) the block's regions; None: all of them
    masks: dict[str, torch.Tensor]  # layer type -> bool (T, 1, widest tree, longest)


def rows_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, attention_mask: Any, dropout: float = 0.0,
                   scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of packed queries ``(1, heads, Q, d)``, each against its own row's region of
    ``key``/``value`` ``(regions, kv_heads, longest, d)`` (see the module docstring); returns
    ``(1, Q, heads, d)`` as transformers' attention functions do."""
    layout: StepLayout | None = kwargs.get("step_layout")
    if layout is None:
        raise DecodingError("rows attention runs only inside a batched verification")
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise DecodingError("batched verification does not support attention softcapping or sinks")
    layer_type = layout.layer_types[module.layer_idx]
    queries = query[0].transpose(0, 1)  # (Q, heads, d)
    if layout.masks is not None:
        mask = layout.masks[layer_type]
        return _attend(queries, layout.region, layout.slot, mask.shape[2], key, value, mask,
                       scaling, dense=layout.dense).unsqueeze(0), None
    out = torch.empty_like(queries)
    # Slot 0 of every row, one query per region: the cost of plain batched decoding.
    out[layout.first] = _attend(queries[layout.first], layout.first_region,
                                torch.zeros_like(layout.first_region), 1, key, value,
                                layout.first_masks[layer_type], scaling,
                                dense=layout.first_dense)
    for group in layout.groups:  # trees, padded to the widest, over their rows' regions only
        keys, values = key, value
        if group.regions is not None:
            keys, values = key.index_select(0, group.regions), value.index_select(0, group.regions)
        mask = group.masks[layer_type]
        out[group.nodes] = _attend(queries[group.nodes], group.node_row, group.node_slot,
                                   mask.shape[2], keys, values, mask, scaling)
    return out.unsqueeze(0), None


def _attend(queries: torch.Tensor, row: torch.Tensor, slot: torch.Tensor, width: int,
            key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor,
            scaling: float | None, *, dense: bool = False) -> torch.Tensor:
    """``queries`` (n, heads, d) placed at (``row``, ``slot``) of a zero-padded block of
    ``key.shape[0]`` rows x ``width``, one SDPA call against ``key``/``value`` under ``mask``,
    and read back at the same places. ``dense``: the queries already are that block, in row-major
    order (every row of ``key`` has ``width`` queries): no padding, no scatter, no gather."""
    count, heads, dim = queries.shape
    regions, kv_heads = key.shape[0], key.shape[1]
    if dense:
        block = queries.view(regions, width, heads, dim)
    else:
        block = queries.new_zeros(regions, width, heads, dim)
        block[row, slot] = queries
    block = block.transpose(1, 2)  # (regions, heads, width, d)
    if width == 1 and kv_heads != heads:
        # One query per row: each key head's query heads become its queries (as transformers'
        # own decoding step does), so SDPA reads every key once instead of once per query head.
        out = torch.nn.functional.scaled_dot_product_attention(
            block.reshape(regions, kv_heads, heads // kv_heads, dim), key, value,
            attn_mask=mask, scale=scaling).reshape(regions, heads, 1, dim)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            block, key, value, attn_mask=mask, scale=scaling, enable_gqa=kv_heads != heads)
    out = out.transpose(1, 2)
    return out.reshape(count, heads, dim) if dense else out[row, slot]


AttentionInterface.register(ROWS_ATTENTION, rows_attention)


class RegionCache:
    """The KV cache the model sees during a batched forward: ``update`` writes the step's new
    keys and values into their rows' regions and returns every region's first ``longest``
    columns. Owned by :class:`TransformersBatchSession`, which sets ``layout`` per forward."""

    is_compileable = False

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []    # per layer (regions, kv_heads, capacity, d)
        self.values: list[torch.Tensor] = []
        self.layout: StepLayout | None = None

    @property
    def regions(self) -> int:
        return int(self.keys[0].shape[0]) if self.keys else 0

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        layout = self.layout
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[layout.region, :, layout.column] = key_states[0].transpose(0, 1)
        values[layout.region, :, layout.column] = value_states[0].transpose(0, 1)
        return keys[:, :, :layout.longest], values[:, :, :layout.longest]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layout.longest if self.layout is not None else 0

    def allocate(self, like: DynamicCache, regions: int, capacity: int) -> None:
        """Empty buffers shaped after a prefill's cache (its heads, head size and dtype)."""
        self.keys = [layer.keys.new_zeros(regions, layer.keys.shape[1], capacity,
                                          layer.keys.shape[3]) for layer in like.layers]
        self.values = [layer.values.new_zeros(regions, layer.values.shape[1], capacity,
                                              layer.values.shape[3]) for layer in like.layers]

    def grow(self, regions: int, capacity: int) -> None:
        """At least ``regions`` regions of ``capacity`` columns, the held entries copied over."""
        regions, capacity = max(regions, self.regions), max(capacity, self.capacity)
        if (regions, capacity) == (self.regions, self.capacity):
            return
        for buffers in (self.keys, self.values):
            for index, old in enumerate(buffers):
                new = old.new_zeros(regions, old.shape[1], capacity, old.shape[3])
                new[:old.shape[0], :, :old.shape[2]] = old
                buffers[index] = new


@dataclass
class _Pending:
    """A row's slots in the last verification forward."""

    num_slots: int
    accepted: list[int] | None = None


class TransformersBatchSession:
    """Several sequences ("rows") of one transformers model, verified together (see the module
    docstring). Implements :class:`restdecode.backends.BatchSession`."""

    def __init__(self, model: "PreTrainedModel", *,
                 head_widths: tuple[int, ...] | None = None) -> None:
        tree_verify._check_supported(model)
        self.model = eager(model)  # the rows' attention is a Python function: no compiled graph
        self.head_widths = head_widths  # restdecode.head.padded_head
        self._layer_types = tree_verify._layer_types(model)
        config = model.config.get_text_config(decoder=True)
        self._windows = {tree_verify.FULL: None}
        if tree_verify.SLIDING in self._layer_types:
            self._windows[tree_verify.SLIDING] = int(config.sliding_window)
        self._configs = _attention_configs(self.model)
        self.cache = RegionCache()
        self._region: dict[int, int] = {}   # row -> its region
        self._lengths: dict[int, int] = {}  # row -> positions held
        self._next_row = 0
        self._pending: dict[int, _Pending] = {}

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
        """KV positions the rows hold together (plus the slots of an uncommitted step)."""
        return sum(self._lengths.values()) + sum(p.num_slots for p in self._pending.values()
                                                 if p.accepted is None)

    @property
    def capacity(self) -> None:
        """No fixed limit: regions grow as rows and trees need (memory permitting)."""
        return None

    def add_row(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """A new row holding ``prompt_ids``; float32 logits ``(vocab,)`` after its last token.

        The prompt is run alone, into a cache of its own (other rows are not part of this
        forward), then copied into a free region."""
        self._check_no_step("add a row")
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise DecodingError("a row needs at least one prompt token")
        own = DynamicCache()
        input_ids = torch.tensor([prompt], device=self.model.device)
        output = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=1,
                            **tree_verify.cache_kwargs(self.model, own))
        region = self._free_region(own, len(prompt))
        for layer, keys, values in zip(own.layers, self.cache.keys, self.cache.values):
            keys[region, :, :len(prompt)] = layer.keys[0]
            values[region, :, :len(prompt)] = layer.values[0]
        row = self._next_row
        self._next_row += 1
        self._region[row], self._lengths[row] = region, len(prompt)
        return row, output.logits[0, -1].float()

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, torch.Tensor]]:
        """New rows holding ``prompts``, prefilled together: ``(row, logits)`` for each, as
        :meth:`add_row` gives them.

        A row's prompt is verified as a chain (its first token pending, the rest as nodes) in a
        free region of its own, all the prompts packed in one forward as a step packs trees, and
        every slot committed: one forward instead of one per prompt, no padding, and no copy
        (SmolLM2 on 2 cores, 8 MT-Bench prompts: 0.85-1.0 s, against 1.4-1.5 s one by one and
        1.04 s as ``generate``'s left-padded batch).
        Only the prompts' last tokens go through the output head. Prompts longer than
        ``PACKED_PREFILL_TOKENS`` (attention pads each to the longest) are prefilled one by one,
        and so is one prompt when the session has no cache yet (it takes its shapes from a
        prefill of its own). If a forward fails, none of the prompts joins."""
        self._check_no_step("add rows")
        prompts = [[int(t) for t in prompt] for prompt in prompts]
        if not all(prompts):
            raise DecodingError("a row needs at least one prompt token")
        added: dict[int, tuple[int, torch.Tensor]] = {}
        packed = [i for i, p in enumerate(prompts) if len(p) <= PACKED_PREFILL_TOKENS]
        try:
            for index in range(len(prompts)):
                if index not in packed:
                    added[index] = self.add_row(prompts[index])
            if packed and not self.cache.keys:  # no long prompt gave the cache its shapes
                added[packed[0]] = self.add_row(prompts[packed[0]])
            packed = [i for i in packed if i not in added]
            if len(packed) == 1:
                added[packed[0]] = self.add_row(prompts[packed[0]])
            elif packed:
                added.update(zip(packed, self._prefill_packed([prompts[i] for i in packed])))
        except BaseException:  # none of them joins
            for row, _ in added.values():
                self.remove_row(row)
            raise
        return [added[index] for index in range(len(prompts))]

    def _prefill_packed(self, prompts: list[list[int]]) -> list[tuple[int, torch.Tensor]]:
        return self._verify_and_prefill([], prompts)[1]

    def verify_joining(self, items: Sequence[tuple[int, int, "CompiledTree"]],
                       prompts: Sequence[Sequence[int]]
                       ) -> tuple[list[torch.Tensor], list[tuple[int, torch.Tensor]]]:
        """:meth:`verify` of ``items`` and :meth:`add_rows` of ``prompts``, in one forward: the
        new rows' prompts ride in the step's forward as chains, as vLLM's chunked prefill mixes
        prefill and decode tokens, instead of a forward of their own that every running row
        waits for. Returns ``verify``'s logits and ``add_rows``' ``(row, logits)``; the new
        rows are committed already, ``items``' rows are resolved by :meth:`commit` as after
        ``verify``. Prompts that :meth:`add_rows` prefills alone (see there) are prefilled so
        before the step, and then so are the others; if the forward fails, no prompt joins."""
        self._check_no_step("verify")
        prompts = [[int(t) for t in prompt] for prompt in prompts]
        if not all(prompts):
            raise DecodingError("a row needs at least one prompt token")
        if not items or not self.cache.keys or any(len(p) > PACKED_PREFILL_TOKENS
                                                   for p in prompts):
            added = self.add_rows(prompts)
            return self.verify(items), added
        return self._verify_and_prefill(items, prompts)

    def _verify_and_prefill(self, items: Sequence[tuple[int, int, "CompiledTree"]],
                            prompts: list[list[int]]
                            ) -> tuple[list[torch.Tensor], list[tuple[int, torch.Tensor]]]:
        """One forward: ``items`` verified, each of ``prompts`` verified as a chain in a new
        row's region (logits at its last token only) and committed."""
        rows = []
        for prompt in prompts:
            region = self._free_region(None, len(prompt))
            row, self._next_row = self._next_row, self._next_row + 1
            self._region[row], self._lengths[row] = region, 0
            rows.append(row)
        try:
            device = self.model.device
            chains = [(row, prompt[0], DraftTree.chain(prompt[1:]).compile(device))
                      for row, prompt in zip(rows, prompts)]
            logits = self._forward(list(items) + chains,
                                   last_only=[False] * len(items) + [True] * len(chains))
        except BaseException:
            for row in rows:
                self._pending.pop(row, None)
                del self._lengths[row], self._region[row]
            raise
        for row, prompt in zip(rows, prompts):  # its slots are its prompt, all in place
            del self._pending[row]
            self._lengths[row] = len(prompt)
        return logits[:len(items)], [(row, row_logits[-1])
                                     for row, row_logits in zip(rows, logits[len(items):])]

    def remove_row(self, row: int) -> None:
        """Drop ``row`` and free its region (also its slots of an uncommitted step)."""
        self._row(row)
        del self._lengths[row], self._region[row]
        if self._pending.pop(row, None) is not None:
            self._finish_step_if_committed()

    # -- a step -----------------------------------------------------------------------------

    def verify(self, items: Sequence[tuple[int, int, "CompiledTree"]]) -> list[torch.Tensor]:
        """Float32 logits ``(1 + n_r, vocab)`` for each ``(row, pending_token, tree)`` of
        ``items`` (distinct rows), from one forward. Each row is then resolved by
        :meth:`commit` (or :meth:`remove_row`) before the next forward."""
        self._check_no_step("verify")
        if not items:
            return []
        return self._forward(items)

    def _forward(self, items: Sequence[tuple[int, int, "CompiledTree"]], *,
                 last_only: Sequence[bool] | None = None) -> list[torch.Tensor]:
        """:meth:`verify`'s forward; ``last_only[i]``: logits ``(1, vocab)`` at item i's last
        slot only (a prefill's), else at all its slots."""
        rows = [self._row(row) for row, _, _ in items]
        if len(set(rows)) != len(rows):
            raise DecodingError(f"a row appears twice in one verification: {rows}")
        # Packed in region order: where every region takes part, the attention's query blocks
        # are the packed tokens themselves (StepLayout.dense), with no scatter or gather.
        order = sorted(range(len(items)), key=lambda index: self._region[rows[index]])
        items, rows = [items[index] for index in order], [rows[index] for index in order]
        last = [bool(last_only[index]) if last_only else False for index in order]
        trees = [tree for _, _, tree in items]
        needed = max(self._lengths[row] + tree.num_slots for row, tree in zip(rows, trees))
        self.cache.grow(0, _doubled(self.cache.capacity, needed))
        device = self.model.device
        layout = self._layout(rows, trees, last)
        tokens = torch.cat([torch.cat([torch.tensor([pending], device=device),
                                       tree.node_tokens.to(device)])
                            for _, pending, tree in items])
        positions = torch.cat([self._lengths[row] + tree.depth_offsets.to(device)
                               for row, tree in zip(rows, trees)])
        widths = [tree.num_slots for tree in trees]
        kept = [1 if only else width for only, width in zip(last, widths)]
        keep = 0  # every slot's logits
        if any(last):
            ends = torch.tensor(widths, device=device).cumsum(0)
            keep = torch.cat([torch.arange(int(end) - count, int(end), device=device)
                              for end, count in zip(ends, kept)])
        self.cache.layout = layout
        try:
            with (_attention_implementation(self._configs, ROWS_ATTENTION),
                  padded_head(self.model, self.head_widths)):
                output = self.model(input_ids=tokens.unsqueeze(0),
                                    position_ids=positions.unsqueeze(0), use_cache=True,
                                    step_layout=layout, logits_to_keep=keep,
                                    **tree_verify.cache_kwargs(self.model, self.cache))
        finally:
            self.cache.layout = None
        # Only now: a forward that failed wrote nothing but columns past the rows' lengths.
        for row, tree in zip(rows, trees):
            self._pending[row] = _Pending(tree.num_slots)
        logits = output.logits[0].float().split(kept)
        returned: list[torch.Tensor] = [None] * len(items)  # type: ignore[list-item]
        for index, row_logits in zip(order, logits):
            returned[index] = row_logits
        return returned

    def commit(self, row: int, accepted_slots: Sequence[int]) -> None:
        """Keep the KV entries of ``accepted_slots`` (slot 0 first, then a root-to-node path; or
        none, to drop the whole tree) of ``row``'s tree in the last forward; its past length
        grows by their number. Entries are moved into place once every row of that forward is
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

    def _free_region(self, prefill: DynamicCache, length: int) -> int:
        """The lowest region no row holds, the cache grown to fit it and ``length`` columns."""
        taken = set(self._region.values())
        region = next(r for r in range(len(taken) + 1) if r not in taken)
        if not self.cache.keys:  # (only add_row comes here first: it has a prefill)
            self.cache.allocate(prefill, 1, _doubled(INITIAL_CAPACITY, length))
        self.cache.grow(_doubled(self.cache.regions, region + 1),
                        _doubled(self.cache.capacity, length))
        return region

    def _layout(self, rows: list[int], trees: list["CompiledTree"],
                chains: list[bool] | None = None) -> StepLayout:
        """The step's :class:`StepLayout`: where each slot is written, and each layer type's
        masks (a slot sees its row's past and its tree ancestors, within the window).
        ``chains[i]``: item i is a prompt riding in the step, attended in a group of its own
        (a draft tree padded to a prompt's length would cost more than the prompt)."""
        device = self.model.device
        chains = chains or [False] * len(trees)
        width = max(tree.num_slots for tree in trees)
        longest = max(self._lengths[row] + tree.num_slots for row, tree in zip(rows, trees))
        regions = self.cache.regions
        region, column, query_slot = [], [], []
        visible = torch.zeros(regions, width, longest, dtype=torch.bool, device=device)
        depth = torch.zeros(regions, width, dtype=torch.long, device=device)
        past = torch.zeros(regions, dtype=torch.long, device=device)
        for row, tree in zip(rows, trees):
            g, length, slots = self._region[row], self._lengths[row], tree.num_slots
            region.append(torch.full((slots,), g, device=device))
            column.append(length + torch.arange(slots, device=device))
            query_slot.append(torch.arange(slots, device=device))
            visible[g, :slots, :length] = True
            visible[g, :slots, length:length + slots] = tree.ancestor_mask.to(device)
            depth[g, :slots] = tree.depth_offsets.to(device)
            past[g] = length
        layout_region, layout_column = torch.cat(region), torch.cat(column)
        layout_slot = torch.cat(query_slot)
        is_node = layout_slot > 0
        members = [[i for i, tree in enumerate(trees) if tree.num_slots > 1 and chains[i] == kind]
                   for kind in (False, True)]
        members = [group for group in members if group]
        widths = [max(trees[i].num_slots for i in group) for group in members]
        # One block pads every row to the widest tree; groups cost a call each per layer but
        # pad only their trees: worth it when the widths differ.
        single = regions * width <= 1.5 * (regions + sum(
            len(group) * (w - 1) for group, w in zip(members, widths)))
        masks = {} if single else None
        seen_by_type = {}
        for layer_type in dict.fromkeys(self._layer_types):
            window = self._windows[layer_type]
            seen = visible
            if window is not None:
                # Key position: the column in the past, the slot's depth in the tree.
                key_position = torch.arange(longest, device=device).expand(regions, longest).clone()
                key_position[layout_region, layout_column] = (
                    past[layout_region] + depth[layout_region, layout_slot])
                query_position = past.unsqueeze(1) + depth
                seen = visible & (key_position.unsqueeze(1) > query_position.unsqueeze(2) - window)
            # A query with no row (padding, or a region outside this step) still sees one key,
            # so that its softmax stays finite; its output is never read.
            seen = seen.clone()
            seen[:, :, 0] |= ~seen.any(dim=2)
            if single:
                masks[layer_type] = seen.unsqueeze(1)
            seen_by_type[layer_type] = seen
        groups = [] if single else [
            self._node_group(group, w, rows, seen_by_type, layout_region, layout_slot,
                             self._in_group(group, trees, is_node) if len(members) > 1
                             else is_node)
            for group, w in zip(members, widths)]
        first_masks = {} if single else {layer_type: seen[:, :1].unsqueeze(1).contiguous()
                                         for layer_type, seen in seen_by_type.items()}
        every_region = len(rows) == regions  # rows come in region order (verify sorts them)
        return StepLayout(
            layout_region, layout_column, longest, self._layer_types, layout_slot, masks,
            dense=every_region and all(tree.num_slots == width for tree in trees),
            first=torch.nonzero(~is_node).squeeze(1), first_region=layout_region[~is_node],
            first_masks=first_masks, first_dense=every_region, groups=groups)

    def _in_group(self, members: list[int], trees: list["CompiledTree"],
                  is_node: torch.Tensor) -> torch.Tensor:
        """Which packed slots are tree slots of items ``members``."""
        device = self.model.device
        owner = torch.repeat_interleave(torch.arange(len(trees), device=device),
                                        torch.tensor([tree.num_slots for tree in trees],
                                                     device=device))
        return is_node & torch.isin(owner, torch.tensor(members, device=device))

    def _node_group(self, members: list[int], width: int, rows: list[int],
                    seen_by_type: dict[str, torch.Tensor], layout_region: torch.Tensor,
                    layout_slot: torch.Tensor, in_group: torch.Tensor) -> NodeGroup:
        """The tree slots of items ``members`` (their widest: ``width``; the packed slots
        ``in_group``) as one group."""
        device = self.model.device
        regions = self.cache.regions
        group_regions = torch.tensor([self._region[rows[i]] for i in members], dtype=torch.long,
                                     device=device)
        # Few trees: their regions' keys are gathered (a small copy); many: all regions serve.
        gather = len(members) <= regions // 2
        block_of = torch.zeros(regions, dtype=torch.long, device=device)
        block_of[group_regions] = torch.arange(len(members), device=device)
        masks = {}
        for layer_type, seen in seen_by_type.items():
            nodes = seen[:, 1:width]
            masks[layer_type] = (nodes.index_select(0, group_regions) if gather
                                 else nodes).unsqueeze(1).contiguous()
        return NodeGroup(
            nodes=torch.nonzero(in_group).squeeze(1),
            node_row=block_of[layout_region[in_group]] if gather else layout_region[in_group],
            node_slot=layout_slot[in_group] - 1, regions=group_regions if gather else None,
            masks=masks)

    def _finish_step_if_committed(self) -> None:
        """Once every row of the last forward is resolved: move each row's accepted slots that
        are not in place to the columns right after its past, in one gather per layer."""
        if any(p.accepted is None for p in self._pending.values()):
            return
        device = self.model.device
        region, source, target = [], [], []
        for row, pending in self._pending.items():
            length, accepted = self._lengths[row], pending.accepted
            moved = [(i, s) for i, s in enumerate(accepted) if s != i]
            if moved:
                region += [self._region[row]] * len(moved)
                target += [length + i for i, _ in moved]
                source += [length + s for _, s in moved]
            self._lengths[row] += len(accepted)
        if region:
            region_t = torch.tensor(region, device=device)
            source_t = torch.tensor(source, device=device)
            target_t = torch.tensor(target, device=device)
            for buffer in (*self.cache.keys, *self.cache.values):
                buffer[region_t, :, target_t] = buffer[region_t, :, source_t]
        self._pending.clear()


def _doubled(size: int, needed: int) -> int:
    """``size`` doubled until it holds ``needed``."""
    size = max(size, 1)
    while size < needed:
        size *= 2
    return size


def _attention_configs(model: "PreTrainedModel") -> list:
    """Every config object the model's modules read their attention implementation from."""
    configs = {id(model.config): model.config}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation_internal"):
            configs[id(config)] = config
    return list(configs.values())


@contextmanager
def _attention_implementation(configs: list, name: str) -> Iterator[None]:
    """Run the model's attention layers with the attention function ``name`` for a while (the
    batched forward), whatever implementation the model was loaded with."""
    before = [config._attn_implementation_internal for config in configs]
    for config in configs:
        config._attn_implementation_internal = name
    try:
        yield
    finally:
        for config, implementation in zip(configs, before):
            config._attn_implementation_internal = implementation

"""Batched decoding: many requests, one verification forward per step, rows joining and leaving.

Each step runs the four stages of :mod:`restdecode.decode` for every active row at once:
**draft** (each row's own drafter proposes its own tree, which may be empty), **verify** (every
row's tree in one forward of a :class:`~restdecode.backends.BatchSession`, with per-row
positions, masks and cache lengths), **accept** (each row's own greedy or sampled acceptance,
with its own random generator) and **commit** (each row keeps only its own accepted KV entries).

Continuous batching: :meth:`BatchDecoder.add` prefills a new request on its own (running rows
are not touched) and the row takes part from the next step; a finished or removed row leaves the
session and its KV entries are freed at once; no row waits for another to finish.

Exactness: a row's slots attend to nothing but its own past and its own tree, so each row's
logits are its single-row logits up to float rounding, and every row's greedy output is the
output of :func:`restdecode.generate` for that request alone. A sampled row draws from its own
generator (its own ``seed``) in the same order as alone: its output does not depend on what
else is in the batch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from restdecode.backends import open_batch_session, as_backend
from restdecode.decode import (GenerationResult, GenerationStats, _check_request, _limit_depth,
                               _Output, _TokenChooser, prompt_token_ids)
from restdecode.drafting.base import Drafter, NoDrafter, StepFeedback, reads_hidden_states
from restdecode.drafting.planner import (BatchGates, CostModel, DraftingGate, PlannedDrafter,
                                         TreeCostCorrection, plan_batch)
from restdecode.drafting.tree import CompiledTree, DraftTree
from restdecode.errors import DecodingError
from restdecode.options import GenerationOptions, check_messages, resolve_options


@dataclass
class BatchRequest:
    """One request of a batch: exactly one of ``prompt`` (raw text), ``messages`` (chat
    template) and ``input_ids``; its own ``options`` (default: the batch's) and ``drafter``
    (default: none, plain steps)."""

    prompt: str | None = None
    messages: list[dict] | None = None
    input_ids: Sequence[int] | None = None
    options: GenerationOptions | None = None
    drafter: Drafter | None = None


@dataclass(frozen=True)
class RowUpdate:
    """What one row produced since the last :meth:`BatchDecoder.step`: its new tokens (the end
    conditions applied), their text (split characters held back, as :func:`restdecode.stream`),
    and whether the row is finished (then :meth:`BatchDecoder.result` holds its result)."""

    tokens: list[int]
    text: str
    finished: bool


@dataclass
class _Row:
    """One request while it decodes: the model side (session row, context, pending token) and
    the output side (:class:`~restdecode.decode._Output`)."""

    handle: int
    output: _Output
    drafter: Drafter
    chooser: _TokenChooser
    context: list[int]          # prompt + generated tokens, the pending one included
    stats: GenerationStats
    started: float
    session_row: int | None = None
    new_tokens: list[int] = field(default_factory=list)
    new_text: list[str] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.context[-1]

    def add(self, tokens: list[int]) -> None:
        """Record accepted tokens in the output (up to its end condition) for the next update."""
        before = len(self.output.ids)
        self.new_text.append("".join(self.output.add(tokens)))
        self.new_tokens += self.output.ids[before:]


class BatchDecoder:
    """Step-by-step batched decoding of ``model`` (a transformers model or a backend that can
    batch), for a scheduler that admits and drops requests between steps.

    ``add(request) -> handle`` prefills the request (at once, or in the next step's forward
    while rows decode: :meth:`add_many`) and makes it a row; ``step()`` runs one
    draft -> verify -> accept -> commit step over every row and returns ``{handle: RowUpdate}``
    for each row that produced tokens or finished (the first token of a row added since the last
    report included; ``updates()`` reports it without a step); ``result(handle)`` is a finished
    row's :class:`GenerationResult`;
    ``remove(handle)`` drops a row at any time (a cancelled request) and frees its cache entries.
    ``profile`` prices one batched forward of two rows or more for the batch planner (the
    batch's total width and cache: :func:`restdecode.latency.batch_profile_for`); without it,
    and for a lone row, the planned drafters' own single-sequence profile is used. ``gates``
    judge, per number of rows (two or more: a lone row drafts as its plan says, as in
    :func:`restdecode.generate`), whether the planned rows' drafting still pays (default: new
    ones; pass the same to another decoder of the same model to keep their verdicts).
    """

    def __init__(self, model, tokenizer, *, options: GenerationOptions | None = None,
                 profile: "CostModel | None" = None, gates: BatchGates | None = None) -> None:
        self.backend = as_backend(model)
        self.profile = profile
        self.tokenizer = tokenizer
        self.options = options if options is not None else GenerationOptions()
        self.session = open_batch_session(self.backend)
        self._eos = self.backend.eos_token_ids(tokenizer)
        self._rows: dict[int, _Row] = {}
        self._joining: list[_Row] = []  # rows whose prompts ride in the next step's forward
        self._results: dict[int, GenerationResult] = {}
        self._next_handle = 0
        self.tree_costs = TreeCostCorrection()  # what tree forwards really cost here
        self.gates = gates if gates is not None else BatchGates()  # does drafting pay
        self._step_cost: CostModel | None = None  # the last plan's cost model
        self._drafted = False  # whether this step's planned rows drafted
        self._gate: DraftingGate | None = None  # the gate of this step's rows (None: one row)
        self._priced_cache = 0  # the cache length the last forward was priced at

    @property
    def active(self) -> list[int]:
        """Handles of the rows still decoding, in the order they joined."""
        return [handle for handle, row in self._rows.items() if not row.output.done]

    def __len__(self) -> int:
        return len(self.active)

    def add(self, request: BatchRequest | str) -> int:
        """Check ``request`` (a :class:`BatchRequest`, or prompt text), prefill it and add it as
        a row; its handle. Its first token is in the next :meth:`updates` (or :meth:`step`; see
        :meth:`add_many` for a prompt that rides in the next step's forward)."""
        return self.add_many([request])[0]

    def add_many(self, requests: Sequence[BatchRequest | str]) -> list[int]:
        """:meth:`add` for several requests at once (all checked first), their prompts prefilled
        together where the backend can (one forward instead of one each); their handles.

        While rows are decoding, a backend that can (``verify_joining``) runs the prompts in
        the next step's forward instead, as vLLM's chunked prefill mixes prefill and decode
        tokens: the running rows do not wait for a forward of their own. Their first tokens
        then come with that step, not with :meth:`updates`."""
        started = time.perf_counter()
        requests = [self.prepare(request) for request in requests]
        rows = [self._new_row(request, started) for request in requests]
        starting = [row for row in rows if not row.output.done]
        if starting and hasattr(self.session, "verify_joining") and self._live_rows():
            self._joining += starting
            starting = []
        if starting:
            try:
                with torch.inference_mode():
                    prefilled = self.session.add_rows([row.context for row in starting])
            except BaseException:  # none of them joined
                for row in rows:
                    del self._rows[row.handle]
                raise
            self._start_rows(starting, prefilled)
        for row in rows:
            if row.output.done and row.handle not in self._results:  # nothing to generate
                self._finish(row)
        return [row.handle for row in rows]

    def _start_rows(self, rows: list[_Row], prefilled: list[tuple[int, torch.Tensor]]) -> None:
        """Each prefilled row's first token, from its prompt's logits; a row that it ends
        finishes."""
        for row, (session_row, logits) in zip(rows, prefilled):
            row.session_row = session_row
            first = row.chooser.first(logits)
            row.context.append(first)
            row.drafter.reset()
            row.drafter.observe(StepFeedback([first]))
            row.stats.time_prefill = time.perf_counter() - row.started
            row.add([first])
            if row.output.done:
                self._finish(row)

    def _new_row(self, request: BatchRequest, started: float) -> _Row:
        options = request.options
        prompt_ids = list(request.input_ids)
        handle, self._next_handle = self._next_handle, self._next_handle + 1
        row = _Row(
            handle=handle,
            output=_Output(self.tokenizer, self._eos, options.max_new_tokens,
                           options.stop_strings, prompt_ids=prompt_ids),
            drafter=request.drafter if request.drafter is not None else NoDrafter(),
            chooser=_TokenChooser(options),
            context=list(prompt_ids),
            stats=GenerationStats(prompt_tokens=len(prompt_ids)),
            started=started,
        )
        self._rows[handle] = row
        return row

    def prepare(self, request: BatchRequest | str) -> BatchRequest:
        """``request`` checked (options, messages, prompt length) and tokenized: a
        :class:`BatchRequest` with ``input_ids`` and ``options`` set; DecodingError or
        OptionsError if it cannot be decoded."""
        request = BatchRequest(prompt=request) if isinstance(request, str) else request
        if reads_hidden_states(request.drafter):
            raise DecodingError("draft heads read each step's hidden state, which batched "
                                "verification does not keep: decode their requests one at a time")
        if request.messages is not None:
            check_messages(request.messages)
        prompt_ids = prompt_token_ids(self.tokenizer, request.prompt, request.messages,
                                      request.input_ids)
        _check_request(self.backend, prompt_ids)
        options = request.options if request.options is not None else self.options
        return BatchRequest(input_ids=prompt_ids, options=options, drafter=request.drafter)

    def step(self, *, draining: bool = False) -> dict[int, RowUpdate]:
        """One decoding step of every active row (one verification forward in all).

        ``draining``: no request will join after these rows (:func:`generate_batch`'s last
        rows), so the batch ends with the row that has the most tokens left, and a row that
        finishes sooner frees a place nobody takes. Then only the planned rows with the most
        tokens left draft; the rows ahead of them take plain steps (:meth:`_critical_rows`)."""
        started = time.perf_counter()
        drafted = self._draft(self._live_rows(), draining=draining)
        committed = 0
        for row, logits, draft, tree in self._verify(drafted):
            committed += self._accept_and_commit(row, logits, draft, tree)
        self._judge_drafting(len(drafted), committed, time.perf_counter() - started)
        return self.updates()

    def updates(self) -> dict[int, RowUpdate]:
        """``{handle: RowUpdate}`` for each row with tokens not yet reported, without a step:
        after :meth:`add`, the new row's first token (from its prefill) or its end. A server
        streams that token at once rather than after the next step's forward."""
        updates = {}
        for handle, row in list(self._rows.items()):
            finished = row.output.done
            if row.new_tokens or finished:
                updates[handle] = RowUpdate(row.new_tokens, "".join(row.new_text), finished)
                row.new_tokens, row.new_text = [], []
            if finished:
                del self._rows[handle]  # the result stays until remove()
        return updates

    def result(self, handle: int) -> GenerationResult:
        """The result of a finished row (kept until :meth:`remove`)."""
        if handle not in self._results:
            state = "still decoding" if handle in self._rows else "unknown"
            raise DecodingError(f"request {handle} has no result: {state}")
        return self._results[handle]

    def remove(self, handle: int) -> None:
        """Forget ``handle``: a decoding row stops now (its cache entries are freed), a finished
        row's result is dropped."""
        row = self._rows.pop(handle, None)
        if row is not None and row.session_row is not None:
            self.session.remove_row(row.session_row)
        self._joining = [joining for joining in self._joining if joining.handle != handle]
        self._results.pop(handle, None)

    # -- the four stages ---------------------------------------------------------------------

    def _live_rows(self) -> list[_Row]:
        """The rows decoding (not those whose prompts have yet to ride in a step)."""
        return [row for row in self._rows.values()
                if not row.output.done and row.session_row is not None]

    def _draft(self, rows: list[_Row], *, draining: bool = False
               ) -> list[tuple[_Row, DraftTree, CompiledTree]]:
        """Every row's tree, cut to the depth worth verifying (a row whose context is full
        finishes instead). Rows with a :class:`PlannedDrafter` are planned together: one
        forward's width goes to the nodes most likely accepted, whichever row they belong to
        (:func:`plan_batch`); other drafters' trees ride along as proposed. ``draining``: only
        the critical planned rows draft (see :meth:`step`)."""
        planned, fixed = [], []
        self._gate = None if len(rows) == 1 else self.gates.for_rows(len(rows))
        # A lone row drafts as the single loop does (priced alike: _cost_model), which has no
        # gate: its planner alone decides. Gated, its first drafted steps (a fresh calibration,
        # first calls) closed the gate for much of a run: 1.18 tokens a step against 1.61.
        drafting = any(isinstance(row.drafter, PlannedDrafter) for row in rows) and (
            self._gate is None or self._gate.should_draft())
        self._drafted = drafting
        critical = self._critical_rows(rows) if draining else None
        for row in rows:
            mark = time.perf_counter()
            depth = min(row.output.remaining - 1, self._context_room(row))
            if depth < 0:
                row.output.stop_reason = "context_full"
                self._finish(row)
            elif isinstance(row.drafter, PlannedDrafter) and (
                    not drafting or (critical is not None and row.handle not in critical)):
                # The gate says drafting does not pay, or the row is ahead of those a draining
                # batch waits for: a plain step.
                fixed.append((row, DraftTree.empty()))
            elif isinstance(row.drafter, PlannedDrafter):
                candidate, probabilities = row.drafter.candidate(row.context)
                within = candidate.depths <= depth
                planned.append((row, candidate.subset(within), probabilities[within]))
            else:
                fixed.append((row, _limit_depth(row.drafter.propose(row.context), depth)))
            row.stats.time_draft += time.perf_counter() - mark
        if planned:
            drafts = fixed + self._plan(planned, fixed)
        else:
            drafts = fixed
            gated = [row.drafter for row, _ in fixed if isinstance(row.drafter, PlannedDrafter)]
            if gated:  # not drafting: the plain forward is still timed against its price
                self._step_cost = self._cost_model(gated[0], len(fixed))
        return self._compile(self._fit_capacity(drafts))

    def _critical_rows(self, rows: list[_Row]) -> set[int]:
        """Handles of the planned rows with the most tokens left (budget, or context room),
        which a draining batch waits for.

        With no request left to join, the batch's time is the sum of its steps until its last
        row finishes, so a drafted token pays only in a row the batch waits for: it ends the
        batch a token sooner once every such row has gained one. A token for a row already
        ahead only ends that row sooner, and the steps after it (one row fewer) cost about
        what they did (on 2 CPU cores a 9-row SmolLM2 step costs what a 16-row one does); the
        batch then ends with a few straggling rows, taking small steps that commit little for
        what they cost (16 MT-Bench prompts on 16 rows: 3% slower than plain steps with
        every row drafting). Unknown ends (an end-of-sequence token) are not predicted."""
        limited = self.backend.context_limit is not None
        left = {row.handle: min(row.output.remaining, self._context_room(row) + 1) if limited
                else row.output.remaining
                for row in rows if isinstance(row.drafter, PlannedDrafter)}
        most = max(left.values(), default=0)
        return {handle for handle, tokens in left.items() if tokens == most}

    def _cost_model(self, drafter: PlannedDrafter, rows: int) -> CostModel:
        """The price of a forward of ``rows`` rows: the batch profile's (else the drafter's).

        A lone row is priced by the drafter's own single-sequence profile, as the single loop
        (:func:`restdecode.generate`) prices it: its batched forward costs what a single one
        does (SmolLM2 on 2 cores, trees of 0-32 nodes: within 4%), yet the batch profile's
        1-row prices, measured on a coarser grid of random trees, bought trees half the size
        and ran 0.94x of the single loop, against 1.01-1.06x with the drafter's profile
        (bench/RESULTS.md, issue 15, tenth session)."""
        if rows == 1 or self.profile is None:
            profile = drafter.profile
        else:
            profile = self.profile
        return profile.for_rows(rows) if hasattr(profile, "for_rows") else profile

    def _fit_capacity(self, drafts: list[tuple[_Row, DraftTree]]) -> list[tuple[_Row, DraftTree]]:
        """The trees cut (first nodes kept, in row order) to the cells the session has left
        after the rows' pasts and pending tokens: a shared context (llama.cpp) never overflows
        mid-step. Rows admitted within :meth:`cells_needed` always have room for plain steps."""
        capacity = self.session.capacity
        if capacity is None:
            return drafts
        free = capacity - self.session.cache_length - len(drafts)
        fitted = []
        for row, tree in drafts:
            keep = min(len(tree), max(free, 0))
            fitted.append((row, tree if keep == len(tree) else tree.subset(np.arange(len(tree)) < keep)))
            free -= keep
        return fitted

    def cells_needed(self, request: BatchRequest | str) -> int:
        """Positions ``request`` can hold at most in the session's cache: its prompt and every
        token it may generate (the last one is never cached, the pending token of each step is).
        A scheduler keeps the rows' sum within :attr:`capacity`."""
        request = self.prepare(request)
        return len(request.input_ids) + request.options.max_new_tokens

    @property
    def capacity(self) -> int | None:
        """Positions all rows may hold together (the session's; None: no fixed limit)."""
        return self.session.capacity

    def _plan(self, planned: list, fixed: list) -> list[tuple[_Row, DraftTree]]:
        if not planned:
            return []
        mark = time.perf_counter()
        drafter = planned[0][0].drafter  # the rows of one model share its latency profile
        rows = len(planned) + len(fixed)
        profile = self._cost_model(drafter, rows)
        self._step_cost = profile
        fixed_width = sum(1 + len(draft) for _, draft in fixed)
        if rows > 1:  # a lone row is priced as the single loop prices it: uncorrected
            profile = self.tree_costs.corrected(profile, len(planned) + fixed_width)
        trees = plan_batch([(tree, p) for _, tree, p in planned], profile,
                           self.session.cache_length, overhead=drafter.overhead,
                           fixed_width=fixed_width, fixed_tokens=len(fixed))
        seconds = time.perf_counter() - mark
        share = seconds / len(planned)
        for row, _, _ in planned:
            row.stats.time_draft += share
        return [(row, tree) for (row, _, _), tree in zip(planned, trees)]

    def _compile(self, drafts: list[tuple[_Row, DraftTree]]
                 ) -> list[tuple[_Row, DraftTree, CompiledTree]]:
        compiled = []
        for row, draft in drafts:
            mark = time.perf_counter()
            compiled.append((row, draft, draft.compile(self.backend.device)))
            row.stats.time_draft += time.perf_counter() - mark
        return compiled

    def _verify(self, drafted):
        """Every row's tree in one forward (with the prompts of the rows joining, if any);
        ``(row, logits, draft, tree)`` per row."""
        joining, self._joining = self._joining, []
        if not drafted and not joining:
            return []
        cache_length = self.session.cache_length
        items = [(row.session_row, row.pending, tree) for row, _, tree in drafted]
        mark = time.perf_counter()
        with torch.inference_mode():
            if joining:
                try:
                    logits, prefilled = self.session.verify_joining(
                        items, [row.context for row in joining])
                except BaseException:  # none of them joined
                    for row in joining:
                        del self._rows[row.handle]
                    raise
            else:
                logits = self.session.verify(items)
        elapsed = time.perf_counter() - mark
        if joining:
            self._start_rows(joining, prefilled)
            # The forward held prompts too: not a price the correction or the gate can learn.
            self._step_cost = None
        # The correction is learnt against the batch profile's prices: a lone row's forward,
        # priced by its drafter's own profile, would teach it another profile's errors.
        if self._step_cost is not None and len(drafted) > 1:
            width = sum(tree.num_slots for _, _, tree in drafted)
            predicted = float(self._step_cost.predict(width, cache_length))
            self.tree_costs.observe(predicted, elapsed, trees=width > len(drafted))
            self._priced_cache = cache_length
        for row, _, _ in drafted:
            row.stats.time_verify += elapsed  # each row waited for the whole forward
        return [(row, row_logits, draft, tree)
                for (row, draft, tree), row_logits in zip(drafted, logits)]

    def _judge_drafting(self, rows: int, committed: int, seconds: float) -> None:
        """Tell the gate what this step cost: a drafted step its tokens and whole seconds
        (drafting, trees, forward, acceptance and commits: at 16 rows the host work beyond the
        forward differs by several ms between drafted and plain steps) against plain steps of
        its rows, priced and scaled by what the gate measured of plain steps (else by the
        forwards' measured ratio); a plain step of planned rows (the gate closed) its seconds
        and price."""
        if self._step_cost is None or self._gate is None or rows == 0:
            self._step_cost = None
            return
        priced = float(self._step_cost.predict(rows, self._priced_cache))
        if self._drafted:
            plain = self._gate.plain_seconds(priced, self.tree_costs.plain_ratio)
            self._gate.record(committed, rows, seconds, plain)
        else:
            self._gate.record_plain(seconds, priced)
        self._step_cost = None

    def _accept_and_commit(self, row: _Row, logits: torch.Tensor, draft: DraftTree,
                           tree: CompiledTree) -> int:
        mark = time.perf_counter()
        with torch.inference_mode():
            slots, tokens = row.chooser.accept(logits, tree)
            self.session.commit(row.session_row, slots)
        row.context += tokens
        row.drafter.observe(StepFeedback(tokens, draft, [slot - 1 for slot in slots[1:]]))
        row.stats.time_accept_commit += time.perf_counter() - mark
        row.stats.steps += 1
        row.stats.tree_size_per_step.append(tree.num_slots - 1)
        row.stats.accepted_per_step.append(len(tokens))
        row.add(tokens)
        if row.output.done:
            self._finish(row)
        return len(tokens)

    # -- rows leaving ------------------------------------------------------------------------

    def _context_room(self, row: _Row) -> int:
        """Deepest draft whose slots still have positions inside the model's context (-1: none)."""
        limit = self.backend.context_limit
        past = self.session.past_length(row.session_row)
        return limit - 1 - past if limit is not None else len(row.context)

    def _finish(self, row: _Row) -> None:
        """The row is done: free its cache entries now, keep its result."""
        if row.session_row is not None:
            self.session.remove_row(row.session_row)
            row.session_row = None  # its entries are gone: a later remove() frees nothing
        row.new_text.append("".join(row.output.flush()))
        stats = row.stats
        stats.time_total = time.perf_counter() - row.started
        stats.time_other = max(0.0, stats.time_decode - stats.time_draft - stats.time_verify
                               - stats.time_accept_commit)
        stats.new_tokens = len(row.output.ids)
        stats.stop_reason = row.output.stop_reason
        self._results[row.handle] = GenerationResult(
            text=row.output.final_text(), token_ids=list(row.output.ids), stats=stats)


def generate_batch(
    model,
    tokenizer,
    requests: Sequence[BatchRequest | str],
    *,
    drafters: Sequence[Drafter | None] | None = None,
    options: GenerationOptions | None = None,
    max_rows: int | None = None,
    profile: "CostModel | None" = None,
    gates: BatchGates | None = None,
    progress: bool = False,
    **option_values: Any,
) -> list[GenerationResult]:
    """Generate every request of ``requests`` (:class:`BatchRequest` objects or prompt texts),
    verified together, one forward per step; one :class:`GenerationResult` per request, in order.

    ``drafters`` gives each request a drafter (``None``: plain steps), as an alternative to
    :attr:`BatchRequest.drafter`. ``options`` and ``option_values`` (applied on top) are the
    options of every request without its own. ``max_rows`` caps the rows decoding at once: the
    next request joins as soon as a row finishes (continuous batching); ``progress`` shows a
    bar of finished requests on stderr. ``profile`` prices the batched forward of two rows or
    more for the batch planner (:func:`restdecode.latency.batch_profile_for`; default, and for
    a lone row: the planned drafters' own single-sequence profile); ``gates``
    (:class:`~restdecode.drafting.planner.BatchGates`) keep the verdicts on whether drafting
    pays across calls. Each result is what
    :func:`restdecode.generate` returns for that request alone (the same tokens when greedy).
    """
    options = resolve_options(options, **option_values)
    requests = [BatchRequest(prompt=r) if isinstance(r, str) else r for r in requests]
    if drafters is not None:
        if len(drafters) != len(requests):
            raise DecodingError(f"{len(drafters)} drafters for {len(requests)} requests")
        if any(d is not None and r.drafter is not None for r, d in zip(requests, drafters)):
            raise DecodingError("a request has a drafter of its own and one in drafters")
        requests = [BatchRequest(r.prompt, r.messages, r.input_ids, r.options, d or r.drafter)
                    for r, d in zip(requests, drafters)]
    if max_rows is not None and max_rows < 1:
        raise DecodingError(f"max_rows must be at least 1, got {max_rows}")
    decoder = BatchDecoder(model, tokenizer, options=options, profile=profile, gates=gates)
    requests = [decoder.prepare(request) for request in requests]  # all checked, then decoded
    waiting = list(enumerate(requests))
    handles: dict[int, int] = {}
    with tqdm(total=len(requests), desc="batched decoding", unit="request", file=sys.stderr,
              disable=not progress) as bar:
        while waiting or decoder.active:
            while waiting and (max_rows is None or len(decoder.active) < max_rows):
                room = len(waiting) if max_rows is None else max_rows - len(decoder.active)
                joining, waiting = waiting[:room], waiting[room:]  # prefilled together
                handles.update(zip([index for index, _ in joining],
                                   decoder.add_many([request for _, request in joining])))
            updates = decoder.step(draining=not waiting)
            bar.update(sum(update.finished for update in updates.values()))
    return [decoder.result(handles[index]) for index in range(len(requests))]

"""The scheduler: one thread owns the engine and runs every request's decoding loop.

Requests wait in a bounded queue and are admitted between decoding steps. Each admitted request
advances one decoding step (draft -> verify -> accept -> commit) per turn, and its text goes to
the front end as that step's piece. With ``max_active=1`` one request decodes at a time (any
backend); with more, the admitted requests are the rows of one batch, verified together in one
forward per step, rows joining and leaving between steps. A request whose client went away is
cancelled at its next step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from restdecode.decode import GenerationResult, TextStream
    from restdecode.engine import Engine
    from restdecode.options import GenerationOptions
    from restdecode.server.memory import LearnedMemory


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` requests already."""


@dataclass
class Job:
    """One request as the scheduler sees it; events go back to the front end's event loop.

    Events: ``("piece", text)`` per decoding step, then ``("done", GenerationResult)`` or
    ``("error", message)``.
    """

    prompt_ids: list[int]
    options: "GenerationOptions"
    tenant: str
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def send(self, kind: str, value: Any) -> None:
        """Hand an event to the front end (thread-safe)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()

    def cancel(self) -> None:
        """Stop at the next decoding step (the client went away)."""
        self.cancelled.set()


class Scheduler:
    """Owns ``engine``; decodes the admitted jobs step by step in its own thread.

    ``speculate=False`` decodes plainly. ``memory`` (a :class:`LearnedMemory`) drafts for each
    job from its tenant's earlier requests and records every finished one. ``max_active`` jobs
    decode at once: 1 runs one generation at a time (any backend); more runs them as rows of one
    batch, verified together in one forward per step (:class:`restdecode.batch.BatchDecoder`,
    backends that can batch). ``on_finish(job, result, outcome)`` is called in the scheduler
    thread as each job leaves (outcome ``finished``, ``cancelled`` or ``error``; result None
    unless finished).
    """

    def __init__(self, engine: "Engine", *, speculate: bool = True,
                 memory: "LearnedMemory | None" = None, max_queue: int = 64,
                 max_active: int = 1,
                 on_finish: Callable[[Job, "GenerationResult | None", str], None] | None = None
                 ) -> None:
        self.engine = engine
        self.speculate = speculate
        self.memory = memory
        self.max_queue = max_queue
        self.max_active = max_active
        self.on_finish = on_finish or (lambda job, result, outcome: None)
        self._lane: _Lane = _BatchLane(self) if max_active > 1 else _StreamLane(self)
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="restdecode-scheduler",
                                        daemon=True)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting to be admitted."""
        return len(self._waiting)

    @property
    def active(self) -> int:
        """Jobs decoding now."""
        return len(self._lane.jobs)

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel everything and end the thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        """Queue ``job``; :class:`QueueFull` when ``max_queue`` jobs are waiting already."""
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting already")
            self._waiting.append(job)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._lane.jobs:
                    self._wake.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            self._start(admitted)
            self._lane.turn()
        for job in self._lane.close() + list(self._waiting):
            job.send("error", "the server is shutting down")

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit (under the lock), in order: a job the lane has no room for
        yet (a shared context's cells) waits at the head of the queue; cancelled ones, and
        ones that could never fit, leave here."""
        admitted = []
        while self._waiting and len(self._lane.jobs) + len(admitted) < self.max_active:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                self.on_finish(job, None, "cancelled")
                continue
            room = self._lane.room(job, admitted)
            if room is False:
                break
            self._waiting.popleft()
            if isinstance(room, str):
                self.leave(job, None, "error", room)
            else:
                admitted.append(job)
        return admitted

    def _start(self, jobs: list[Job]) -> None:
        """Hand ``jobs`` to the lane together (a batch prefills them in one forward); a bad
        request that got past the front end's checks leaves with its error."""
        starts = []
        for job in jobs:
            try:
                starts.append((job, self._drafter(job)))
            except Exception as error:
                self.leave(job, None, "error", str(error))
        try:
            failed = self._lane.add(starts)
        except Exception as error:  # never let the lane take the scheduler thread down
            failed = [(job, f"{type(error).__name__}: {error}") for job, _ in starts]
        for job, message in failed:
            self.leave(job, None, "error", message)

    def _drafter(self, job: Job):
        """This job's drafter: none (plain), or datastore + context + its tenant's memory."""
        from restdecode.drafting import NoDrafter

        if not self.speculate:
            return NoDrafter()
        learned = self.memory.drafter(job.tenant) if self.memory is not None else None
        if learned is None:
            return self.engine.new_drafter()  # per job: a drafter keeps its request's state
        return self.engine.new_drafter(learned=learned)

    def leave(self, job: Job, result: "GenerationResult | None", outcome: str,
              message: str = "") -> None:
        """``job`` is done (``finished``: recorded in the memory, then answered)."""
        if outcome == "finished":
            self._remember(job, result)
            job.send("done", result)
        elif outcome == "error":
            job.send("error", message)
        self.on_finish(job, result, outcome)

    def _remember(self, job: Job, result: "GenerationResult") -> None:
        """Record the finished request (prompt + answer) in the learned memory, if any."""
        if self.memory is None:
            return
        try:
            self.memory.record(job.tenant, job.prompt_ids + result.token_ids)
        except Exception as error:  # a memory failure loses the record, never the answer
            self.engine.say(f"warning: the memory could not record a request: {error}")


class _Lane(Protocol):
    """How the admitted jobs decode; ``turn`` advances each by one decoding step."""

    @property
    def jobs(self) -> list[Job]:
        """The jobs decoding now."""

    def room(self, job: Job, admitted: list[Job]) -> bool | str:
        """Whether ``job`` fits next to the running jobs and ``admitted`` (about to start):
        True, False (not yet: wait), or why it never will."""

    def add(self, starts: list[tuple[Job, Any]]) -> list[tuple[Job, str]]:
        """Start decoding each ``(job, drafter)``; the jobs that could not start, and why."""

    def turn(self) -> None:
        """One decoding step of every job; jobs that end leave through ``Scheduler.leave``."""

    def close(self) -> list[Job]:
        """Stop decoding; the jobs that were still running."""


class _StreamLane:
    """One generation per job (:meth:`Engine.stream`), each advanced in turn: any backend."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.streams: dict[int, tuple[Job, "TextStream"]] = {}

    @property
    def jobs(self) -> list[Job]:
        return [job for job, _ in self.streams.values()]

    def room(self, job: Job, admitted: list[Job]) -> bool:
        return True  # each job its own session: its context is checked by the decoding loop

    def add(self, starts: list[tuple[Job, Any]]) -> list[tuple[Job, str]]:
        failed = []
        for job, drafter in starts:
            try:
                stream = self.scheduler.engine.stream(input_ids=job.prompt_ids,
                                                      options=job.options, drafter=drafter)
            except Exception as error:
                failed.append((job, str(error)))
            else:
                self.streams[id(job)] = (job, stream)
        return failed

    def turn(self) -> None:
        for key, (job, stream) in list(self.streams.items()):
            if job.cancelled.is_set():
                stream.close()
                self._leave(key, None, "cancelled")
                continue
            try:
                piece = next(stream)  # one decoding step (the first one is the prefill)
            except StopIteration:
                self._leave(key, stream.result, "finished")
            except Exception as error:  # never let one request take the scheduler down
                self._leave(key, None, "error", f"{type(error).__name__}: {error}")
            else:
                job.send("piece", piece)

    def _leave(self, key: int, result, outcome: str, message: str = "") -> None:
        job, _ = self.streams.pop(key)
        self.scheduler.leave(job, result, outcome, message)

    def close(self) -> list[Job]:
        jobs = self.jobs
        for _, stream in self.streams.values():
            stream.close()
        self.streams.clear()
        return jobs


class _BatchLane:
    """Every job a row of one :class:`~restdecode.batch.BatchDecoder`: one forward per step for
    all of them, rows joining (after their own prefill) and leaving between steps."""

    def __init__(self, scheduler: Scheduler) -> None:
        from restdecode.batch import BatchDecoder

        self.scheduler = scheduler
        engine = scheduler.engine
        # The batch planner prices a step by the batched forward's own measured profile.
        self.decoder = BatchDecoder(engine.model, engine.tokenizer,
                                    profile=engine.batch_profile if engine.plans_drafts else None)
        self.rows: dict[int, Job] = {}  # handle -> job
        self.cells: dict[int, int] = {}  # handle -> cache positions its job may hold at most

    @property
    def jobs(self) -> list[Job]:
        return list(self.rows.values())

    def room(self, job: Job, admitted: list[Job]) -> bool | str:
        """On a shared context (llama.cpp), a job starts only when its prompt and all the
        tokens it may generate fit beside what the running and admitted jobs may hold: no
        request fails mid-answer because others filled the cells."""
        capacity = self.decoder.capacity
        if capacity is None:
            return True
        try:
            needed = self._cells(job)
        except Exception:  # a bad request: _start says why
            return True
        if needed > capacity:
            return (f"the request needs {needed} positions (prompt and max_tokens); the batch's "
                    f"shared context holds {capacity} (restdecode serve --context)")
        held = sum(self.cells.values()) + sum(self._cells(other) for other in admitted)
        return held + needed <= capacity

    def _cells(self, job: Job) -> int:
        from restdecode.batch import BatchRequest

        return self.decoder.cells_needed(BatchRequest(input_ids=job.prompt_ids,
                                                      options=job.options))

    def add(self, starts: list[tuple[Job, Any]]) -> list[tuple[Job, str]]:
        """The jobs become rows together: their prompts are prefilled in one forward."""
        from restdecode.batch import BatchRequest

        failed, jobs, requests = [], [], []
        for job, drafter in starts:
            try:
                requests.append(self.decoder.prepare(BatchRequest(
                    input_ids=job.prompt_ids, options=job.options, drafter=drafter)))
                jobs.append(job)
            except Exception as error:
                failed.append((job, str(error)))
        if not jobs:
            return failed
        try:
            handles = self.decoder.add_many(requests)
        except Exception as error:  # the shared prefill failed: every joining job fails with it
            return failed + [(job, f"{type(error).__name__}: {error}") for job in jobs]
        for handle, job in zip(handles, jobs):
            self.rows[handle] = job
            if self.decoder.capacity is not None:
                self.cells[handle] = self._cells(job)
        self._send(self.decoder.updates())  # first tokens now, not after the next forward
        return failed

    def turn(self) -> None:
        for handle, job in list(self.rows.items()):
            if job.cancelled.is_set():
                self._leave(handle, None, "cancelled")
        if not self.rows:  # every row left (cancelled, or finished by its first token)
            return
        try:
            updates = self.decoder.step()
        except Exception as error:  # the shared forward failed: every row fails with it
            for handle in list(self.rows):
                self._leave(handle, None, "error", f"{type(error).__name__}: {error}")
            return
        self._send(updates)

    def _send(self, updates: dict) -> None:
        """Each row's new text to its job; finished rows leave."""
        for handle, update in updates.items():
            job = self.rows[handle]
            if update.text:
                job.send("piece", update.text)
            if update.finished:
                self._leave(handle, self.decoder.result(handle), "finished")

    def _leave(self, handle: int, result, outcome: str, message: str = "") -> None:
        job = self.rows.pop(handle)
        self.cells.pop(handle, None)
        self.decoder.remove(handle)  # frees the row's cache entries (or its kept result)
        self.scheduler.leave(job, result, outcome, message)

    def close(self) -> list[Job]:
        jobs = self.jobs
        for handle in list(self.rows):
            self.decoder.remove(handle)
        self.rows.clear()
        self.cells.clear()
        return jobs

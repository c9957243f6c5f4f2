"""The scheduler: one thread owns the engine and runs every request's decoding loop.

Requests wait in a bounded queue and are admitted between decoding steps. Each admitted request
advances one decoding step (draft -> verify -> accept -> commit) per turn, and its text goes to
the front end as that step's piece. Today one request decodes at a time (``max_active=1``): the
admission and the per-step turn are the seam where batched decoding plugs in, rows joining and
leaving between steps. A request whose client went away is cancelled at its next step.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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


@dataclass
class _Running:
    job: Job
    stream: "TextStream"


class Scheduler:
    """Owns ``engine``; decodes the admitted jobs step by step in its own thread.

    ``speculate=False`` decodes plainly. ``memory`` (a :class:`LearnedMemory`) drafts for each
    job from its tenant's earlier requests and records every finished one. ``on_finish(job,
    result, outcome)`` is called in the scheduler thread as each job leaves (outcome
    ``finished``, ``cancelled`` or ``error``; result None unless finished).
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
        self._waiting: collections.deque[Job] = collections.deque()
        self._active: list[_Running] = []
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
        return len(self._active)

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
                while not self._stopping and not self._waiting and not self._active:
                    self._wake.wait()
                if self._stopping:
                    break
                self._admit()
            for running in list(self._active):
                self._turn(running)
        for running in self._active:
            running.stream.close()
        for job in [r.job for r in self._active] + list(self._waiting):
            job.send("error", "the server is shutting down")

    def _admit(self) -> None:
        """Move waiting jobs into decoding while there is room (under the lock)."""
        while self._waiting and len(self._active) < self.max_active:
            job = self._waiting.popleft()
            if job.cancelled.is_set():
                self.on_finish(job, None, "cancelled")
                continue
            try:
                stream = self.engine.stream(input_ids=job.prompt_ids, options=job.options,
                                            drafter=self._drafter(job))
            except Exception as error:  # a bad request that got past the front end's checks
                self._leave(job, None, "error", str(error))
                continue
            self._active.append(_Running(job, stream))

    def _drafter(self, job: Job):
        """This job's drafter: none (plain), or datastore + context + its tenant's memory."""
        from restdecode.drafting import NoDrafter

        if not self.speculate:
            return NoDrafter()
        learned = self.memory.drafter(job.tenant) if self.memory is not None else None
        if learned is None:
            return self.engine.new_drafter()  # per job: a drafter keeps its request's state
        return self.engine.new_drafter(learned=learned)

    def _turn(self, running: _Running) -> None:
        """One decoding step of ``running`` (the first one is the prefill)."""
        job = running.job
        if job.cancelled.is_set():
            running.stream.close()
            self._finish(running, None, "cancelled")
            return
        try:
            piece = next(running.stream)
        except StopIteration:
            result = running.stream.result
            self._remember(job, result)
            self._finish(running, result, "finished")
        except Exception as error:  # never let one request take the scheduler down
            self._finish(running, None, "error", f"{type(error).__name__}: {error}")
        else:
            job.send("piece", piece)

    def _remember(self, job: Job, result: "GenerationResult") -> None:
        """Record the finished request (prompt + answer) in the learned memory, if any."""
        if self.memory is None:
            return
        try:
            self.memory.record(job.tenant, job.prompt_ids + result.token_ids)
        except Exception as error:  # a memory failure loses the record, never the answer
            self.engine.say(f"warning: the memory could not record a request: {error}")

    def _finish(self, running: _Running, result, outcome: str, message: str = "") -> None:
        self._active.remove(running)
        self._leave(running.job, result, outcome, message)

    def _leave(self, job: Job, result, outcome: str, message: str = "") -> None:
        if outcome == "finished":
            job.send("done", result)
        elif outcome == "error":
            job.send("error", message)
        self.on_finish(job, result, outcome)

"""The scheduler in-process (no HTTP): what each lane sends its jobs, and when."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models

from tiny_models import BYTE_VOCAB, byte_tokenizer, tiny_model  # noqa: E402
from restdecode.decode import generate  # noqa: E402
from restdecode.drafting import NoDrafter  # noqa: E402
from restdecode.engine import Engine  # noqa: E402
from restdecode.options import GenerationOptions  # noqa: E402
from restdecode.server.scheduler import Job, Scheduler  # noqa: E402


@pytest.fixture(scope="module")
def engine():
    return Engine(tiny_model("llama", vocab_size=BYTE_VOCAB), byte_tokenizer(), draft=False)


def run_jobs(scheduler: Scheduler, jobs: list[Job], events: list) -> None:
    """Submit ``jobs`` to ``scheduler`` together (before it starts: one burst; stopped at the
    end), logging each event as ``(job index, kind, value)`` in ``events``; return once every
    job has ended."""
    ended = threading.Semaphore(0)
    for index, job in enumerate(jobs):
        def send(kind, value, index=index):
            events.append((index, kind, value))
            if kind in ("done", "error"):
                ended.release()
        job.send = send
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    try:
        for _ in jobs:
            assert ended.acquire(timeout=60), events
    finally:
        scheduler.stop()


def test_a_batch_row_streams_its_first_token_before_the_next_forward(engine):
    """The batched lane sends a joining request's first token (from its prefill) at once, as
    the one-at-a-time lane does, instead of after the next step's forward: time to first
    token is a prefill, not a prefill and a step. The texts are still generate's. (The jobs
    arrive together, with no row decoding: their prompts are prefilled at once, not in a step.)"""
    scheduler = Scheduler(engine, speculate=False, max_active=4)
    events: list = []
    decoder = scheduler._lane.decoder
    for name in ("add_many", "step"):  # log each call before it runs
        def logged(*args, _name=name, _call=getattr(decoder, name), **kwargs):
            events.append((None, _name, None))
            return _call(*args, **kwargs)
        setattr(decoder, name, logged)
    prompts = ["the cat", "hello there", "zzz"]
    loop = asyncio.new_event_loop()
    try:
        jobs = [Job(prompt_ids=engine.tokenizer(p)["input_ids"],
                    options=GenerationOptions(max_new_tokens=n), tenant="t", loop=loop)
                for p, n in zip(prompts, (6, 1, 5))]
        run_jobs(scheduler, jobs, events)
    finally:
        loop.close()
    immediate = 0
    for index, job in enumerate(jobs):
        expected = generate(engine.model, engine.tokenizer, input_ids=job.prompt_ids,
                            drafter=NoDrafter(), max_new_tokens=job.options.max_new_tokens)
        own = [n for n, (i, _, _) in enumerate(events) if i == index]
        # A first token that is part of a character is held back until the character is whole;
        # a whole one (or a row that ends with it) must be sent straight after the prefill.
        if "\ufffd" not in engine.tokenizer.decode(expected.token_ids[:1]) or len(own) == 2:
            immediate += 1
            last_call = [kind for i, kind, _ in events[:own[0]] if i is None][-1]
            assert events[own[0]][1] == "piece" and last_call == "add_many", (
                f"request {index}'s first token waited for a step: {events}")
        assert events[own[-1]][1] == "done"
        assert "".join(events[n][2] for n in own if events[n][1] == "piece") == expected.text
        assert events[own[-1]][2].token_ids == expected.token_ids
    assert immediate == 3
    assert sum(kind == "step" for _, kind, _ in events) >= 5  # the longest answer's steps

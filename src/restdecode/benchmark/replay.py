"""Drafting replay: what a drafter gives on a recorded greedy output, without running the model.

Under greedy decoding a step's accepted path depends only on the draft tree and on the tokens the
model goes on to produce. Replaying a recorded greedy output through a drafter therefore yields
exactly the steps the decoding loop (:mod:`restdecode.decode`) would take with that drafter, at
the cost of drafting alone: it measures what drafts could give if verification were free, or
priced by a latency profile (``bench/replay.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from restdecode.drafting import DraftTree, StepFeedback


@dataclass(frozen=True)
class ReplayStep:
    """One decoding step of a replay: draft nodes verified, tokens committed (accepted + the
    bonus token), and the KV cache length the step verified against."""

    nodes: int
    committed: int
    cache_length: int


def greedy_accepted_path(tree: DraftTree, future: Sequence[int]) -> list[int]:
    """Node indices of the longest root path of ``tree`` spelling a prefix of ``future``
    (the walk of :func:`restdecode.accept.accept_greedy`, with the output in place of argmaxes)."""
    tokens = tree.tokens.tolist()
    slots: list[int] = []
    slot = 0  # the root; slot i + 1 is node i (DraftTree.children)
    for token in future:
        slot = next((child for child in tree.children[slot] if tokens[child - 1] == token), None)
        if slot is None:
            break
        slots.append(slot)
    return [slot - 1 for slot in slots]


def replay(drafter, prompt_ids: Sequence[int], output_ids: Sequence[int], *,
           max_new_tokens: int | None = None) -> list[ReplayStep]:
    """The decoding steps after prefill that ``drafter`` would take to produce ``output_ids``
    (a greedy output of the model, as recorded) from ``prompt_ids``.

    Calls the drafter as the loop does (``reset``, ``observe``, ``propose``), drafts cut to the depth ``max_new_tokens`` (default: the output's length)
    leaves room for, so a stateful drafter (e.g. a planner's calibration) learns the same things.
    """
    output = list(output_ids)
    if not output:
        return []
    limit = len(output) if max_new_tokens is None else max_new_tokens
    context = list(prompt_ids) + output[:1]  # the prefill chose the first token
    drafter.reset()
    drafter.observe(StepFeedback(output[:1]))
    steps: list[ReplayStep] = []
    while len(context) - len(prompt_ids) < len(output):
        produced = len(context) - len(prompt_ids)
        draft = drafter.propose(context)
        draft = draft.subset(draft.depths <= limit - produced - 1)
        path = greedy_accepted_path(draft, output[produced:])
        committed = output[produced:produced + len(path) + 1]
        steps.append(ReplayStep(len(draft), len(committed), len(context) - 1))
        context += committed
        drafter.observe(StepFeedback(committed, draft, path))
    return steps

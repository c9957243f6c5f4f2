"""The one place that chooses restdecode's default drafter (CLI, chat and bench all call it)."""

from __future__ import annotations

from restdecode.drafting.base import ContinuationDrafter
from restdecode.drafting.combined import CombinedDrafter
from restdecode.drafting.context import ContextDrafter
from restdecode.drafting.retrieval import RetrievalDrafter, SuffixSearcher

# Nodes per draft tree. On 2 CPU cores one verification of SmolLM2-135M costs ~1.4x a plain step
# at 8-16 nodes but ~3x at 64, while merged retrieval + context drafting accepts ~2.2-2.35 tokens
# per step at 8-16 nodes (offline simulation): a dozen nodes is where time per token is lowest.
DEFAULT_BUDGET = 12


def default_drafter(datastore: SuffixSearcher | None, *, budget: int = DEFAULT_BUDGET) -> ContinuationDrafter:
    """Datastore retrieval merged with context lookup under one node ``budget``; context lookup
    alone without a datastore."""
    if datastore is None:
        return ContextDrafter(budget=budget)
    return CombinedDrafter([RetrievalDrafter(datastore), ContextDrafter()], budget=budget)

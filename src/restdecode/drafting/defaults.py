"""The one place that chooses restdecode's default drafter (CLI, chat and bench all call it)."""

from __future__ import annotations

from restdecode.drafting.base import ContinuationDrafter
from restdecode.drafting.combined import CombinedDrafter
from restdecode.drafting.context import ContextDrafter
from restdecode.drafting.retrieval import RetrievalDrafter, SuffixSearcher

# Nodes per draft tree. On a 2-core CPU a verification forward grows costlier with width
# (DESIGN.md's measured curve); 12 nodes sit near the curve's cheap region.
DEFAULT_BUDGET = 12


def default_drafter(datastore: SuffixSearcher | None, *, budget: int = DEFAULT_BUDGET) -> ContinuationDrafter:
    """Datastore retrieval merged with context lookup under one node ``budget``; context lookup
    alone without a datastore."""
    if datastore is None:
        return ContextDrafter(budget=budget)
    return CombinedDrafter([RetrievalDrafter(datastore), ContextDrafter()], budget=budget)

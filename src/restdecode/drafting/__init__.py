"""Drafters and the draft tree they propose."""

from restdecode.drafting.base import (
    ContinuationDrafter,
    Drafter,
    NoDrafter,
    StepFeedback,
    WeightedContinuations,
)
from restdecode.drafting.combined import CombinedDrafter
from restdecode.drafting.context import ContextDrafter
from restdecode.drafting.draft_model import DraftModelDrafter, check_same_tokenizer
from restdecode.drafting.defaults import (CANDIDATE_BUDGET, DEFAULT_BUDGET, default_drafter,
                                          default_memory)
from restdecode.drafting.memory import MemoryDrafter
from restdecode.drafting.planner import PlannedDrafter
from restdecode.drafting.retrieval import RetrievalDrafter
from restdecode.drafting.tree import CompiledTree, DraftTree

__all__ = [
    "CANDIDATE_BUDGET",
    "DEFAULT_BUDGET",
    "CombinedDrafter",
    "CompiledTree",
    "ContextDrafter",
    "ContinuationDrafter",
    "DraftModelDrafter",
    "DraftTree",
    "Drafter",
    "MemoryDrafter",
    "NoDrafter",
    "PlannedDrafter",
    "RetrievalDrafter",
    "StepFeedback",
    "WeightedContinuations",
    "check_same_tokenizer",
    "default_drafter",
    "default_memory",
]

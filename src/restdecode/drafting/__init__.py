"""Drafters and the draft tree they propose."""

from restdecode.drafting.tree import CompiledTree, DraftTree

__all__ = ["CompiledTree", "DraftTree"]

"""restdecode: lossless retrieval-based speculative decoding for Hugging Face causal LMs."""

from __future__ import annotations

__version__ = "0.1.0"

# Public names, imported lazily so that `import restdecode` (and the CLI's --help) stays fast.
_LAZY = {
    "Engine": "restdecode.engine",
    "GenerationOptions": "restdecode.options",
    "TextStream": "restdecode.decode",
    "generate": "restdecode.decode",
    "stream": "restdecode.decode",
    "GenerationResult": "restdecode.decode",
    "generate_batch": "restdecode.batch",
    "BatchDecoder": "restdecode.batch",
    "BatchRequest": "restdecode.batch",
    "Datastore": "restdecode.datastore",
    "build_datastore": "restdecode.datastore",
    "DraftTree": "restdecode.drafting.tree",
    "fetch": "restdecode.assets",
    "load": "restdecode.models",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'restdecode' has no attribute {name!r}")


__all__ = sorted(_LAZY)

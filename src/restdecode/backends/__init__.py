"""Verification backends: what runs the model under the decode loop.

A backend evaluates token trees for the loop and nothing else; the loop (``restdecode.decode``)
and the drafters never see which one runs. Two exist:

* ``transformers`` (:class:`~restdecode.backends.transformers.TransformersBackend`): any
  Hugging Face causal LM, eager or ``torch.compile``'d, tree verification with a 4D mask;
* ``llamacpp`` (:class:`~restdecode.backends.llamacpp.LlamaCppBackend`): a GGUF file on
  llama.cpp (through llama-cpp-python's low-level API), one ``llama_decode`` batch per tree.

The protocol is two small classes: a :class:`Backend` (the loaded model: vocabulary, context,
end-of-sequence ids, a key for latency profiles) opens :class:`Session` objects, each one
sequence's KV state with four verbs: ``prefill``, ``verify``, ``commit`` and ``truncate``
(roll back without a new prefill, e.g. a draft model's session after a partial acceptance). A backend that can
verify several sequences in one forward (a :class:`BatchBackend`: transformers and llama.cpp) opens
:class:`BatchSession` objects: rows join (``add_row``, their own prefill, or ``add_rows``) and leave
(``remove_row``) between steps, and one ``verify`` evaluates every row's tree at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from restdecode.errors import ModelError

if TYPE_CHECKING:
    import torch

    from restdecode.drafting.tree import CompiledTree

BACKENDS: tuple[str, ...] = ("transformers", "llamacpp")
AUTO = "auto"  # llama.cpp for GGUF models when llama-cpp-python is installed, else transformers


@runtime_checkable
class Session(Protocol):
    """One sequence's KV state on a backend.

    ``past_length`` is the number of positions in its KV cache. The decode loop keeps one
    *pending* token (chosen, not yet evaluated): ``verify`` evaluates it as slot 0 together
    with the tree's nodes (slot i+1 = node i), and ``commit`` keeps the accepted slots.
    """

    past_length: int

    def prefill(self, prompt_ids: Sequence[int]) -> "torch.Tensor":
        """Start over with ``prompt_ids`` in the cache; float32 logits ``(vocab,)`` after its
        last token."""

    def verify(self, pending_token: int, tree: "CompiledTree") -> "torch.Tensor":
        """Float32 logits ``(1 + n, vocab)`` at every slot, from one forward. The result may be
        a view of the backend's buffers: valid until the next call on this session."""

    def commit(self, accepted_slots: Sequence[int]) -> None:
        """Keep the KV entries of ``accepted_slots`` (slot 0 first, then a root-to-node path)
        of the last ``verify``, drop the other slots; ``past_length`` grows by their number."""

    def truncate(self, length: int) -> None:
        """Keep the first ``length <= past_length`` positions and drop the rest (and the slots
        of a ``verify`` not committed), without recomputing anything: ``past_length`` becomes
        ``length``, and the next call sees what a session that never went further would.
        A session opened with ``rollback=r`` can always go back ``r`` positions; further back
        it may raise DecodingError (a sliding-window cache that moved on)."""


@runtime_checkable
class Backend(Protocol):
    """A loaded model that opens :class:`Session` objects."""

    name: str

    @property
    def device(self) -> "torch.device":
        """Where draft trees are compiled to."""

    @property
    def vocab_size(self) -> int:
        """Token ids the model embeds (``0 .. vocab_size - 1``)."""

    @property
    def context_limit(self) -> int | None:
        """Positions one sequence may hold, None when unbounded."""

    def eos_token_ids(self, tokenizer) -> set[int]:
        """Token ids that end a generation."""

    def session(self, *, rollback: int = 0) -> Session:
        """A new, empty sequence that can always be truncated back ``rollback`` positions."""

    def profile_key(self) -> dict:
        """What this backend's timings depend on (model, machine, threads, ...), for latency
        profiles."""


@runtime_checkable
class BatchSession(Protocol):
    """Several sequences ("rows") on one backend, verified together.

    Each row has its own past (``past_length(row)``), its own pending token and its own tree;
    rows join and leave between steps without touching the others. A step is one ``verify`` of
    any subset of the rows (a row's tree may be empty: a plain step), then one ``commit`` (or
    ``remove_row``) per verified row before the next ``verify`` or ``add_row``.

    Optional: ``verify_joining(items, prompts) -> (logits, [(row, logits)])``, a ``verify`` and
    an ``add_rows`` in one forward (the transformers session has it; llama.cpp's does not).
    """

    @property
    def rows(self) -> list[int]:
        """The rows in the session."""

    @property
    def cache_length(self) -> int:
        """KV positions held for all rows together (outside a step: the sum of their
        ``past_length``)."""

    @property
    def capacity(self) -> int | None:
        """KV positions all rows may hold together, a step's tree slots included (llama.cpp: the
        context's cells); None when only memory bounds it."""

    def past_length(self, row: int) -> int:
        """Positions ``row`` holds in the cache (its context without the pending token)."""

    def add_row(self, prompt_ids: Sequence[int]) -> tuple[int, "torch.Tensor"]:
        """A new row holding ``prompt_ids`` (its own prefill, no other row is recomputed): its
        id and float32 logits ``(vocab,)`` after the prompt's last token."""

    def add_rows(self, prompts: Sequence[Sequence[int]]) -> list[tuple[int, "torch.Tensor"]]:
        """Rows for several prompts at once, as :meth:`add_row` gives each (a backend may
        prefill them together); if one fails, none of them joins."""

    def verify(self, items: Sequence[tuple[int, int, "CompiledTree"]]) -> list["torch.Tensor"]:
        """For each ``(row, pending_token, tree)`` (distinct rows), float32 logits
        ``(1 + n_row, vocab)`` at every slot of the row's tree, all from one forward."""

    def commit(self, row: int, accepted_slots: Sequence[int]) -> None:
        """Keep the KV entries of ``row``'s ``accepted_slots`` (slot 0 first, then a
        root-to-node path; empty: keep none) of the last ``verify``; ``past_length(row)`` grows
        by their number."""

    def remove_row(self, row: int) -> None:
        """Drop ``row`` and free every KV entry it holds (any time, also mid-step)."""


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend that also verifies several sequences in one forward."""

    def batch_session(self) -> BatchSession:
        """A new batch session with no rows."""


def open_batch_session(backend: Backend) -> BatchSession:
    """``backend.batch_session()``, or a ModelError when this backend cannot batch."""
    if not isinstance(backend, BatchBackend):
        raise ModelError(f"the {backend.name} backend cannot decode several sequences in one "
                         f"batch; use the transformers or llama.cpp backend")
    return backend.batch_session()


def as_backend(model) -> Backend:
    """``model`` itself when it is a backend, else a transformers model wrapped in one."""
    if isinstance(model, Backend):
        return model
    from restdecode.backends.transformers import TransformersBackend

    return TransformersBackend(model)


def check_backend_name(name: str) -> str:
    """``name`` if it is a known backend (or ``auto``), else ModelError listing them."""
    if name != AUTO and name not in BACKENDS:
        raise ModelError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}, {AUTO}")
    return name


def resolve_backend(name: str, model: str, *, compile: bool = False) -> str:
    """The backend ``name`` stands for when loading ``model`` (an asset name, a ``.gguf`` file or
    a Hugging Face directory): ``auto`` is the fastest one installed that can run it (on a CPU,
    llama.cpp for a GGUF; transformers for a Hugging Face directory or with ``compile``)."""
    check_backend_name(name)
    if name != AUTO:
        return name
    if compile or not llamacpp_available():
        return "transformers"
    from restdecode.models import is_gguf_model

    return "llamacpp" if is_gguf_model(model) else "transformers"


def llamacpp_available() -> bool:
    """Whether llama-cpp-python can be imported here."""
    from importlib.util import find_spec

    return find_spec("llama_cpp") is not None

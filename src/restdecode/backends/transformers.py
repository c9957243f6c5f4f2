"""The transformers backend: a Hugging Face causal LM (eager or compiled) under the decode loop.

The tree forward, the 4D mask and the KV gathering live in :mod:`restdecode.verify`; this module
puts them behind the :class:`~restdecode.backends.Session` protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from restdecode import verify as tree_verify
from restdecode.errors import DecodingError
from restdecode.head import padded_head

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from restdecode.backends.transformers_batch import TransformersBatchSession
    from restdecode.drafting.tree import CompiledTree


class TransformersBackend:
    """A transformers model (or :class:`~restdecode.compiled.CompiledModel`) as a backend."""

    name = "transformers"
    # A region per row, attention per row (one block or two groups); 4: one query per row packs
    # each key head's query heads (GQA), which changed the prices of plain rows.
    batch_layout = "batch-regions-4"
    gives_hidden_states = True  # session(hidden=True): final hidden states, for draft heads

    def __init__(self, model: "PreTrainedModel") -> None:
        self.model = model
        self._head_widths: tuple[int, ...] | None | bool = False  # False: not looked up yet

    @property
    def head_widths(self) -> tuple[int, ...] | None:
        """The row counts this model's output head runs at in restdecode's forwards
        (:mod:`restdecode.head`; None: as they come, e.g. on a GPU or a compiled model)."""
        if self._head_widths is False:
            from restdecode.compiled import is_compiled
            from restdecode.head import head_widths_for

            self._head_widths = None if is_compiled(self.model) else head_widths_for(self.model)
        return self._head_widths

    @property
    def device(self) -> "torch.device":
        return self.model.device

    @property
    def vocab_size(self) -> int:
        return int(self._text_config().vocab_size)

    @property
    def context_limit(self) -> int | None:
        return getattr(self._text_config(), "max_position_embeddings", None)

    def _text_config(self):
        return self.model.config.get_text_config(decoder=True)

    def eos_token_ids(self, tokenizer) -> set[int]:
        """Every end-of-sequence id of the model's generation config (else the tokenizer's)."""
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def session(self, *, rollback: int = 0, hidden: bool = False) -> "TransformersSession":
        return TransformersSession(self.model, rollback=rollback, hidden=hidden,
                                   head_widths=self.head_widths)

    def batch_session(self) -> "TransformersBatchSession":
        """Rows verified together in one forward over a packed KV cache
        (:mod:`restdecode.backends.transformers_batch`)."""
        from restdecode.backends.transformers_batch import TransformersBatchSession

        return TransformersBatchSession(self.model, head_widths=self.head_widths)

    def profile_key(self) -> dict:
        from restdecode.head import table_digest
        from restdecode.latency import profile_key

        key = profile_key(self.model)
        if self.head_widths is not None:  # the forwards timed are padded ones
            key["head_padding"] = table_digest(self.head_widths)
        return key

    def __repr__(self) -> str:
        return f"TransformersBackend({self.model!r})"


class TransformersSession:
    """One sequence: a transformers KV cache (:func:`restdecode.verify.new_cache`).

    ``rollback``: positions :meth:`truncate` can always take back; only sliding-window layers
    pay for it (they keep that many positions more than their window needs). ``hidden``: keep
    the model's final hidden states of the last forward (:meth:`hidden_state`), for draft heads.
    """

    def __init__(self, model: "PreTrainedModel", *, rollback: int = 0,
                 hidden: bool = False, head_widths: tuple[int, ...] | None = None) -> None:
        if rollback < 0:
            raise ValueError(f"rollback must be >= 0, got {rollback}")
        self.model = model
        self.rollback = rollback
        self.head_widths = head_widths  # restdecode.head.padded_head
        self._hidden: list | None = [] if hidden else None
        self.cache = tree_verify.new_cache(model)
        self.past_length = 0
        self._slots = 0  # slots of the last verification, to be resolved by commit

    def prefill(self, prompt_ids: Sequence[int]) -> "torch.Tensor":
        if self.past_length or self._slots:
            self.cache = tree_verify.new_cache(self.model)
            self._slots = 0
        self._clear_hidden()
        with padded_head(self.model, self.head_widths):
            logits = tree_verify.prefill(self.model, self.cache, list(prompt_ids),
                                         history=self.rollback, hidden=self._hidden)
        self.past_length = len(prompt_ids)
        return logits

    def verify(self, pending_token: int, tree: "CompiledTree") -> "torch.Tensor":
        self._slots = tree.num_slots
        self._clear_hidden()
        with padded_head(self.model, self.head_widths):
            return tree_verify.verify(self.model, self.cache, pending_token, tree,
                                      self.past_length, hidden=self._hidden)

    def hidden_state(self, slot: int) -> "torch.Tensor":
        """The model's final hidden state (after its last norm) at ``slot`` of the last
        ``verify`` (after a prefill: the prompt's last token, whatever ``slot``). Only for a
        session opened with ``hidden=True``."""
        if not self._hidden:
            raise DecodingError("no hidden state: open the session with hidden=True and run a "
                                "forward first")
        states = self._hidden[0]
        return states if states.dim() == 1 else states[slot]

    def _clear_hidden(self) -> None:
        if self._hidden is not None:
            self._hidden.clear()

    def commit(self, accepted_slots: Sequence[int]) -> None:
        tree_verify.commit(self.cache, accepted_slots, self._slots, history=self.rollback)
        self.past_length += len(accepted_slots)
        self._slots = 0

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (at most ``past_length``), dropping the rest and
        any uncommitted verification slots; DecodingError when a sliding-window layer no longer
        holds what position ``length`` needs (more than ``rollback`` positions back)."""
        if length > self.past_length:
            raise DecodingError(f"cannot truncate a session of {self.past_length} committed "
                                f"positions to {length}")
        tree_verify.truncate_cache(self.cache, self.past_length + self._slots, length)
        self.past_length = length
        self._slots = 0

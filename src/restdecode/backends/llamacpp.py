"""The llama.cpp backend: a GGUF model on llama.cpp, through llama-cpp-python's low-level API.

Tree verification is one ``llama_decode`` batch, as in llama.cpp's own speculative example:

* every root-to-leaf path of the tree is a llama.cpp *sequence*; the past (the prompt and the
  accepted tokens) belongs to all of them (``llama_memory_seq_cp`` adds a sequence id to the
  past cells, it copies no data);
* each slot (the pending token, then the nodes) belongs to the sequences of every leaf below
  it, at position ``past + depth``, with logits requested for every slot. llama.cpp masks a
  token's attention to the cells of its first sequence at positions up to its own, which for
  a tree is exactly the slot's ancestors and the past;
* committing keeps one sequence (``llama_memory_seq_keep``) through the last accepted slot,
  after removing its cells beyond the accepted depth (``llama_memory_seq_rm``); that sequence
  is the main one of the next step.

The context uses a unified KV cache (``kv_unified``: all sequences share one buffer; without
it each sequence gets its own slice of the context and ``seq_cp`` copies data). The logits are
read in place, as a view of llama.cpp's output buffer, never copied per position.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from restdecode.errors import DecodingError, ModelError

if TYPE_CHECKING:
    from restdecode.backends.llamacpp_batch import LlamaCppBatchSession
    from restdecode.drafting.tree import CompiledTree

DEFAULT_CONTEXT = 4096  # positions per context (at most the model's training context)
MAX_SEQUENCES = 256  # LLAMA_MAX_SEQ: tree leaves per verification
BATCH = 512  # tokens per llama_decode call (prompt chunks; the widest tree)

INSTALL_HINT = ("the llama.cpp backend needs llama-cpp-python: `make setup` builds it (minutes "
                "on first install), or `pip install 'restdecode[llamacpp]'`")


def _llama_cpp():
    """The ``llama_cpp`` module, its log reduced to errors; ModelError when not installed."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelError(f"{INSTALL_HINT} ({error})") from error
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    return llama_cpp


class LlamaCppBackend:
    """A GGUF model on llama.cpp with one context (one KV cache); sessions take turns on it.

    ``n_threads`` defaults to every core (llama-cpp-python's ``Llama`` defaults to half);
    ``n_ctx`` to :data:`DEFAULT_CONTEXT` or the model's training context if shorter (a larger
    ``n_ctx`` gives batched rows more cells to share; one sequence still holds at most the
    training context's positions).
    Flash attention is off, as in llama-cpp-python's ``Llama`` default, so that the plain
    baseline and this backend run the same kernels.
    """

    name = "llamacpp"

    def __init__(self, gguf: str | os.PathLike, *, n_ctx: int | None = None,
                 n_threads: int | None = None, flash_attn: bool = False) -> None:
        llama_cpp = _llama_cpp()
        self.path = Path(gguf)
        if not self.path.is_file():
            raise ModelError(f"GGUF file {self.path} does not exist")
        self._lib = llama_cpp
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), model_params)
        if not self._model:
            raise ModelError(f"llama.cpp could not load {self.path}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_threads = int(n_threads or os.cpu_count() or 1)
        train_context = int(llama_cpp.llama_model_n_ctx_train(self._model))
        self.n_ctx = int(n_ctx or min(DEFAULT_CONTEXT, train_context or DEFAULT_CONTEXT))
        # One sequence's positions: a context shared by batched rows may hold more cells than
        # the model was trained on, one row never more positions.
        self._positions = min(self.n_ctx, train_context) if train_context > 0 else self.n_ctx
        self.flash_attn = flash_attn
        self._ctx = self._new_context()
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._batch = _Batch(BATCH, MAX_SEQUENCES)
        self._eog: set[int] | None = None
        self._active: LlamaCppSession | None = None

    def _new_context(self):
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = BATCH
        params.n_threads = params.n_threads_batch = self.n_threads
        params.n_seq_max = MAX_SEQUENCES
        params.kv_unified = True
        params.swa_full = True  # sliding-window layers keep every cell: seq_rm works on them
        params.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                  else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        context = lib.llama_init_from_model(self._model, params)
        if not context:
            raise ModelError(f"llama.cpp could not create a context for {self.path}")
        return context

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def context_limit(self) -> int:
        """Positions one sequence may hold: the context's cells, at most the training context."""
        return self._positions

    def eos_token_ids(self, tokenizer=None) -> set[int]:
        """Every end-of-generation id of the GGUF's vocabulary (``llama_vocab_is_eog``), the
        set llama.cpp's own generation stops at."""
        if self._eog is None:
            is_eog = self._lib.llama_vocab_is_eog
            self._eog = {t for t in range(self._n_vocab) if is_eog(self._vocab, t)}
        return set(self._eog)

    def session(self, *, rollback: int = 0) -> "LlamaCppSession":
        """A new sequence; it takes over the context (earlier sessions can no longer be used).

        Every cell is kept until removed (``swa_full``), so any ``rollback`` is possible."""
        self._lib.llama_memory_clear(self._memory, True)
        self._active = LlamaCppSession(self)
        return self._active

    def batch_session(self) -> "LlamaCppBatchSession":
        """A new batch of rows verified together (one ``llama_decode`` per step); it takes over
        the context, as :meth:`session` does."""
        from restdecode.backends.llamacpp_batch import LlamaCppBatchSession

        self._lib.llama_memory_clear(self._memory, True)
        self._active = LlamaCppBatchSession(self)
        return self._active

    def profile_key(self) -> dict:
        from restdecode.latency import cpu_model

        return {
            "model": self.path.name,
            "gguf_size": self.path.stat().st_size,
            "backend": "llamacpp",
            "llama_cpp_python": getattr(self._lib, "__version__", ""),
            "system": self._lib.llama_print_system_info().decode(errors="replace"),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": self.n_threads,
            "flash_attn": self.flash_attn,
        }

    def decode(self, batch: "_Batch") -> np.ndarray:
        """Run ``batch``; the logits of its slots, a ``(n, vocab)`` float32 view (no copy)."""
        status = self._lib.llama_decode(self._ctx, batch.struct)
        if status != 0:
            raise DecodingError(f"llama_decode failed with status {status} "
                                f"({batch.n_tokens} tokens)")
        outputs = int(batch.logits[: batch.n_tokens].sum())
        pointer = self._lib.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(outputs, self._n_vocab))

    def close(self) -> None:
        """Free the context and the model (also done when garbage-collected)."""
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            self._lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    def __repr__(self) -> str:
        return f"LlamaCppBackend({str(self.path)!r}, n_ctx={self.n_ctx}, threads={self.n_threads})"


class LlamaCppSession:
    """One sequence on a :class:`LlamaCppBackend`'s context."""

    def __init__(self, backend: LlamaCppBackend) -> None:
        self.backend = backend
        self.past_length = 0
        self.main_sequence = 0  # the sequence holding the past
        self._slot_sequences: list[int] = []  # first sequence of each slot of the last verify
        self._sequences: list[int] = []  # every sequence of the last verify
        self._slots = 0  # slots of the last verify

    def _memory(self):
        if self.backend._active is not self:
            raise DecodingError("this llama.cpp session was superseded by a newer one on the "
                                "same backend (one context runs one sequence at a time)")
        return self.backend._memory

    def prefill(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        lib, memory = self.backend._lib, self._memory()
        lib.llama_memory_clear(memory, True)
        self.main_sequence, self.past_length = 0, 0
        ids = np.asarray(prompt_ids, dtype=np.int32)
        if ids.size == 0:
            raise DecodingError("the prompt is empty: at least one token is needed")
        batch = self.backend._batch
        for start in range(0, len(ids), batch.capacity):
            chunk = ids[start:start + batch.capacity]
            batch.fill_chain(chunk, start, want_last=start + len(chunk) == len(ids))
            logits = self.backend.decode(batch)
        self.past_length = len(ids)
        return torch.from_numpy(logits[-1].copy())

    def verify(self, pending_token: int, tree: "CompiledTree") -> torch.Tensor:
        lib, memory = self.backend._lib, self._memory()
        parents = tree.slot_parents
        if len(parents) > self.backend._batch.capacity:
            raise DecodingError(f"a tree of {len(parents) - 1} nodes exceeds the llama.cpp "
                                f"backend's batch of {self.backend._batch.capacity} tokens")
        membership, leaves = _leaf_membership(tree)
        if len(leaves) > MAX_SEQUENCES:
            raise DecodingError(f"a tree with {len(leaves)} leaves exceeds llama.cpp's "
                                f"{MAX_SEQUENCES} sequences")
        sequences = _sequence_ids(len(leaves), self.main_sequence)
        for sequence in sequences[1:]:
            lib.llama_memory_seq_cp(memory, self.main_sequence, sequence, -1, -1)
        tokens = np.empty(len(parents), dtype=np.int32)
        tokens[0] = pending_token
        tokens[1:] = tree.node_tokens.numpy()
        positions = self.past_length + tree.depth_offsets.numpy()
        first = self.backend._batch.fill_tree(tokens, positions, membership, sequences)
        self._slot_sequences, self._sequences = first, sequences
        self._slots = len(parents)
        return torch.from_numpy(self.backend.decode(self.backend._batch))

    def commit(self, accepted_slots: Sequence[int]) -> None:
        lib, memory = self.backend._lib, self._memory()
        kept = len(accepted_slots)
        keep = self._slot_sequences[accepted_slots[-1]] if kept else self.main_sequence
        # That sequence's cells beyond the accepted depth, then every cell not in it, go. A
        # chain (a plain step included) has one sequence: only its rejected tail, if any.
        if kept < self._slots:
            lib.llama_memory_seq_rm(memory, keep, self.past_length + kept, -1)
        if len(self._sequences) > 1:
            lib.llama_memory_seq_keep(memory, keep)
        self.main_sequence = keep
        self.past_length += kept

    def truncate(self, length: int) -> None:
        """Remove every cell at a position from ``length`` on, in every sequence (uncommitted
        tree slots included); only the main sequence remains."""
        lib, memory = self.backend._lib, self._memory()
        if not 0 <= length <= self.past_length:
            raise DecodingError(f"cannot truncate a session of {self.past_length} committed "
                                f"positions to {length}")
        if not lib.llama_memory_seq_rm(memory, -1, length, -1):
            raise DecodingError(f"llama.cpp cannot remove part of this model's memory (a "
                                f"recurrent model?): no rollback to {length} positions")
        lib.llama_memory_seq_keep(memory, self.main_sequence)  # other sequences' tags go
        self.past_length = length
        self._slots = 0


def _leaf_membership(tree: "CompiledTree") -> tuple[np.ndarray, np.ndarray]:
    """``(membership, leaves)``: the leaf slots, and bool ``(slots, leaves)`` telling whether a
    slot lies on the path to each leaf (the ancestor mask read column-wise)."""
    has_child = np.zeros(tree.num_slots, dtype=bool)
    parents = np.asarray(tree.slot_parents[1:], dtype=np.int64)
    has_child[parents] = True
    leaves = np.flatnonzero(~has_child)
    ancestors = tree.ancestor_mask.numpy()  # [i, j]: slot i sees slot j (j on i's path)
    return ancestors[leaves].T, leaves


def _sequence_ids(count: int, main: int) -> list[int]:
    """``count`` sequence ids, ``main`` first (it holds the past)."""
    return [main] + [s for s in range(count + 1) if s != main][: count - 1]


class _Batch:
    """A ``llama_batch`` over numpy arrays this object owns (filled without per-token ctypes)."""

    def __init__(self, capacity: int, max_sequences: int) -> None:
        import llama_cpp

        self.capacity = capacity
        self.tokens = np.zeros(capacity, dtype=np.int32)
        self.positions = np.zeros(capacity, dtype=np.int32)
        self.sequence_counts = np.zeros(capacity, dtype=np.int32)
        self.sequences = np.zeros((capacity, max_sequences), dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        # seq_id is an array of pointers, one per token row of ``self.sequences``.
        self._rows = (ctypes.POINTER(llama_cpp.llama_seq_id) * capacity)(*[
            row.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_seq_id)) for row in self.sequences
        ])
        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=self.tokens.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token)),
            embd=None,
            pos=self.positions.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos)),
            n_seq_id=self.sequence_counts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
            seq_id=self._rows,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    @property
    def n_tokens(self) -> int:
        return int(self.struct.n_tokens)

    def fill_chain(self, tokens: np.ndarray, start: int, *, want_last: bool) -> None:
        """Consecutive ``tokens`` of sequence 0 from position ``start``; logits of the last one
        if ``want_last``."""
        n = len(tokens)
        self.tokens[:n] = tokens
        self.positions[:n] = np.arange(start, start + n)
        self.sequence_counts[:n] = 1
        self.sequences[:n, 0] = 0
        self.logits[:n] = 0
        self.logits[n - 1] = 1 if want_last else 0
        self.struct.n_tokens = n

    def fill_tree(self, tokens: np.ndarray, positions: np.ndarray, membership: np.ndarray,
                  sequence_ids: Sequence[int]) -> list[int]:
        """Tree slots with logits for all; slot i in the sequences of the leaves it leads to
        (``membership[i]``). Returns each slot's first sequence id."""
        n, ids = len(tokens), np.asarray(sequence_ids, dtype=np.int32)
        self.tokens[:n] = tokens
        self.positions[:n] = positions
        counts = membership.sum(axis=1)
        self.sequence_counts[:n] = counts
        # Each row's member sequences first (stable: in leaf order).
        order = np.argsort(~membership, axis=1, kind="stable")
        self.sequences[:n, : len(ids)] = ids[order]
        self.logits[:n] = 1
        self.struct.n_tokens = n
        return self.sequences[:n, 0].tolist()


def requantize(source: str | os.PathLike, target: str | os.PathLike, ftype: str) -> Path:
    """Write ``source`` GGUF as ``target`` with tensors of type ``ftype`` (``f32``, ``f16``,
    ``q8_0``, ``q4_1``...; from a quantized file: its de-quantized weights re-quantized).
    Written under a temporary name and renamed, so ``target`` is complete or absent."""
    llama_cpp = _llama_cpp()
    constant = f"LLAMA_FTYPE_{'ALL' if ftype.lower() == 'f32' else 'MOSTLY'}_{ftype.upper()}"
    if not hasattr(llama_cpp, constant):
        raise ModelError(f"unknown GGUF tensor type {ftype!r}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, constant)
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(temp).encode(),
                                            ctypes.byref(params))
    if status != 0:
        temp.unlink(missing_ok=True)
        raise ModelError(f"llama.cpp could not write {target} as {ftype} (status {status})")
    os.replace(temp, target)
    return target

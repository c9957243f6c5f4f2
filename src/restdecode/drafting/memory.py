"""Online memory: context drafting that also looks into this model's own earlier outputs.

SuffixDecoding's key idea (Oliaro et al. 2024): a model served many requests repeats itself
(formats, phrases, code idioms), so the outputs it already produced are a datastore made for it.
:class:`MemoryDrafter` is a :class:`ContextDrafter` whose searchable sequence is *memory + current
context*: the longest suffix of the context is matched in the current context and in every
remembered output alike, and the continuations of all its occurrences form the tree.

Each generation's output (every token the loop committed, handed over through ``observe``, the
last step's and the end-of-sequence token included) joins the memory when the next generation
starts (``reset``). Outputs are separated by a token id no model has, so no match and no
continuation crosses from one output into the next. The memory keeps the most recent
``max_tokens`` tokens' worth of whole outputs; :meth:`forget` empties it. :meth:`save` and
:meth:`load` keep it across processes (token ids of the outputs only: no prompt, no text).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from restdecode.drafting.base import StepFeedback, WeightedContinuations, context_array
from restdecode.drafting.context import ContextDrafter
from restdecode.errors import RestdecodeError

SEPARATOR = -2  # never a token id, and not the -1 that pads continuation rows
DEFAULT_MEMORY_TOKENS = 200_000
MEMORY_FILE_VERSION = 1


class MemoryFileError(RestdecodeError):
    """A saved memory cannot be loaded: damaged, or saved for another vocabulary."""


class MemoryDrafter(ContextDrafter):
    """Context drafting over remembered outputs + the current context.

    Args:
        max_tokens: the memory keeps whole outputs, newest first, up to this many tokens.
        other arguments: as :class:`ContextDrafter`.
    """

    def __init__(self, *, max_tokens: int = DEFAULT_MEMORY_TOKENS, **context_options) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens = max_tokens
        self._outputs: deque[np.ndarray] = deque()
        self._memory_tokens = 0
        self._output: list[int] = []  # committed tokens of the current generation
        super().__init__(**context_options)

    @property
    def outputs(self) -> list[list[int]]:
        """The remembered outputs, oldest first."""
        return [output.tolist() for output in self._outputs]

    @property
    def memory_tokens(self) -> int:
        """Tokens of remembered outputs (separators not counted)."""
        return self._memory_tokens

    def reset(self) -> None:
        """Start a new generation: the last one's output joins the memory."""
        if getattr(self, "_output", None):
            self._remember(np.asarray(self._output, dtype=np.int64))
        self._output = []
        super().reset()
        self._index_memory()

    def forget(self) -> None:
        """Empty the memory (and the current generation)."""
        self._outputs.clear()
        self._memory_tokens = 0
        self._output = []
        super().reset()
        self._index_memory()

    def remember(self, output: Sequence[int]) -> None:
        """Add one finished output to the memory (searchable from the next generation on)."""
        self._remember(context_array(output))

    def continuations(self, token_ids: Sequence[int]) -> WeightedContinuations:
        """Continuations of the longest suffix's occurrences in memory and current context.

        A context that does not extend the indexed one starts a new generation (as
        :meth:`reset`: the output seen so far is remembered)."""
        return _cut_at_separators(super().continuations(token_ids))

    def observe(self, feedback: StepFeedback) -> None:
        """Keep the committed tokens: they are this generation's output."""
        self._output.extend(int(token) for token in feedback.committed)

    def save(self, path: str | os.PathLike, *, key: str) -> None:
        """Write the remembered outputs and the current generation's (token ids only) to
        ``path`` atomically, tagged with ``key`` (e.g. the tokenizer's fingerprint: ids mean
        nothing under another vocabulary)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        current = [np.asarray(self._output, dtype=np.int64)] if self._output else []
        outputs = list(self._outputs) + current
        tokens = np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.int64)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temp, "wb") as file:
            np.savez(file, tokens=tokens.astype(np.int64),
                     lengths=np.array([o.size for o in outputs], dtype=np.int64),
                     key=np.array(key), version=np.array(MEMORY_FILE_VERSION))
        os.replace(temp, path)

    def load(self, path: str | os.PathLike, *, key: str, vocab_size: int) -> int:
        """Remember the outputs saved at ``path`` (before any remembered now); their number.

        A missing file is an empty memory. A file for another ``key``, or damaged, or holding
        an id outside ``[0, vocab_size)``, raises :class:`MemoryFileError` and loads nothing.
        """
        path = Path(path)
        if not path.exists():
            return 0
        try:
            with np.load(path, allow_pickle=False) as data:
                saved_key, version = str(data["key"]), int(data["version"])
                tokens, lengths = data["tokens"], data["lengths"]
        except Exception as error:  # numpy raises many kinds on a damaged archive
            raise MemoryFileError(f"memory file {path} is damaged ({error})") from None
        if version != MEMORY_FILE_VERSION or saved_key != key:
            raise MemoryFileError(f"memory file {path} was saved for {saved_key!r} "
                                  f"(version {version}), not {key!r}")
        if (tokens.ndim != 1 or lengths.ndim != 1 or int(lengths.sum()) != tokens.size
                or (lengths < 0).any() or (tokens.size and not (0 <= tokens.min() and
                                                                tokens.max() < vocab_size))):
            raise MemoryFileError(f"memory file {path} is damaged (inconsistent arrays or ids "
                                  f"outside the vocabulary of {vocab_size})")
        earlier = list(self._outputs)
        self._outputs.clear()
        self._memory_tokens = 0
        for output in np.split(tokens.astype(np.int64), np.cumsum(lengths)[:-1]) if lengths.size else []:
            self._remember(output)
        for output in earlier:
            self._remember(output)
        super().reset()
        self._output = []
        self._index_memory()
        return int(lengths.size)

    def _remember(self, output: np.ndarray) -> None:
        if output.size == 0 or self.max_tokens == 0:
            return
        self._outputs.append(np.array(output[-self.max_tokens:], dtype=np.int64))
        self._memory_tokens += self._outputs[-1].size
        while self._memory_tokens > self.max_tokens:
            self._memory_tokens -= self._outputs.popleft().size

    def _index_memory(self) -> None:
        """Index the remembered outputs, each followed by a separator; the context comes next."""
        if self._outputs:
            separator = np.array([SEPARATOR], dtype=np.int64)
            self._append(np.concatenate([part for output in self._outputs
                                         for part in (output, separator)]))
        self._context_start = self._length


def _cut_at_separators(found: WeightedContinuations) -> WeightedContinuations:
    """Rows end before the first separator (an output's end); rows left empty are dropped."""
    if len(found) == 0:
        return found
    rows = found.continuations
    is_separator = rows == SEPARATOR
    if not is_separator.any():
        return found
    lengths = np.where(is_separator.any(axis=1), is_separator.argmax(axis=1), found.lengths)
    lengths = np.minimum(lengths, found.lengths)
    keep = lengths > 0
    rows = np.where(np.arange(rows.shape[1])[None, :] < lengths[:, None], rows, -1)
    return WeightedContinuations(rows[keep], lengths[keep], found.weights[keep],
                                 found.match_length)

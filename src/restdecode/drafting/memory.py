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
``max_tokens`` tokens' worth of whole outputs; :meth:`forget` empties it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

from restdecode.drafting.base import StepFeedback, WeightedContinuations, context_array
from restdecode.drafting.context import ContextDrafter

SEPARATOR = -2  # never a token id, and not the -1 that pads continuation rows
DEFAULT_MEMORY_TOKENS = 200_000


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

    def _remember(self, output: np.ndarray) -> None:
        if output.size == 0 or self.max_tokens == 0:
            return
        self._outputs.append(np.array(output[-self.max_tokens:], dtype=np.int64))
        self._memory_tokens += self._outputs[-1].size
        while self._memory_tokens > self.max_tokens:
            self._memory_tokens -= self._outputs.popleft().size

    def _index_memory(self) -> None:
        """Index the remembered outputs, each followed by a separator; the context comes next."""
        for output in self._outputs:
            self._append(output)
            self._append(np.array([SEPARATOR], dtype=np.int64))
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

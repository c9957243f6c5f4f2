"""What a generation asks for, checked once: :class:`GenerationOptions` and chat messages.

Names follow ``transformers``' ``GenerationConfig`` where it has one. Every entry point (the
Python API, the CLI, the benchmark, the server) builds its options here, so a bad value is
refused with the same clear message everywhere instead of being used silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from restdecode.errors import OptionsError

MESSAGE_ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class GenerationOptions:
    """How to generate.

    * ``max_new_tokens``: most new tokens (>= 0);
    * ``temperature``: 0 decodes greedily, > 0 samples (losslessly) from the model's distribution
      after ``top_k`` (0: off) and ``top_p`` (1.0: off), in that order, as transformers does;
    * ``stop_strings``: generation ends at the token completing one of them (kept in the text);
    * ``seed``: seeds the sampling generator (None: a fresh random seed).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = field(default_factory=tuple)
    seed: int | None = None

    def __post_init__(self) -> None:
        _check_int("max_new_tokens", self.max_new_tokens, minimum=0)
        _check_int("top_k", self.top_k, minimum=0)
        if self.seed is not None:
            _check_int("seed", self.seed, minimum=0)
        temperature = _check_number("temperature", self.temperature)
        if temperature < 0:
            raise OptionsError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        top_p = _check_number("top_p", self.top_p)
        if not 0 < top_p <= 1:
            raise OptionsError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop_strings", _check_stop_strings(self.stop_strings))

    @property
    def greedy(self) -> bool:
        """True when tokens are chosen by argmax (temperature 0)."""
        return self.temperature == 0

    def updated(self, **changes: Any) -> "GenerationOptions":
        """A copy with ``changes`` applied (and checked)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise OptionsError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)


def resolve_options(options: GenerationOptions | None, **changes: Any) -> GenerationOptions:
    """``options`` (default: :class:`GenerationOptions`) with keyword ``changes`` applied."""
    base = options if options is not None else GenerationOptions()
    return base.updated(**changes) if changes else base


def check_messages(messages: Any) -> list[dict]:
    """``messages`` if it is a non-empty list of ``{"role": known role, "content": text}``."""
    if not isinstance(messages, list) or not messages:
        raise OptionsError('messages must be a non-empty list of {"role": ..., "content": ...}')
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise OptionsError(f'message {index} must be an object with "role" and "content"')
        if message["role"] not in MESSAGE_ROLES:
            raise OptionsError(f"message {index} has role {message['role']!r}; "
                               f"known roles: {', '.join(MESSAGE_ROLES)}")
        if not isinstance(message["content"], str):
            raise OptionsError(f"message {index}'s content must be text, got "
                               f"{type(message['content']).__name__}")
    return messages


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise OptionsError(f"{name} must be >= {minimum}, got {value}")


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(f"{name} must be a number, got {value!r}")
    if math.isnan(value):
        raise OptionsError(f"{name} must be a number, got NaN")
    return float(value)


def _check_stop_strings(stop_strings: Any) -> tuple[str, ...]:
    if stop_strings is None:
        return ()
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    if not isinstance(stop_strings, Sequence) or not all(isinstance(s, str) for s in stop_strings):
        raise OptionsError(f"stop_strings must be a list of strings, got {stop_strings!r}")
    return tuple(s for s in stop_strings if s)

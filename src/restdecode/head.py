"""The output head (``lm_head``) run at the row counts the CPU multiplies fastest.

On a CPU the matrix product behind ``lm_head`` does not cost in proportion to its rows: on 2
cores of this project's machine (torch 2.13, SmolLM2's 49,152 x 576 head) 1 row took 9 ms, 3 rows
33 ms, 4 rows 17 ms, 7 rows 34 ms and 8 rows 19 ms, as the BLAS kernels pick different blockings.
A verification forward needs the logits of every token it verifies, so a step of 7 rows paid for
the head nearly twice what a step of 8 did. :func:`measure_head_widths` times the head at every
row count up to ``max_width``; within :func:`padded_head` the head pads its input with zero
rows up to the cheapest count at most ``slack`` above (where that saves at least 10%) and cuts
the output back. The logits of the real rows are the same product, computed by another
blocking: they may differ in float rounding (~1e-6), as any two kernel choices do. The table
is cached per model and machine beside the latency profiles (:func:`head_widths_for`), whose
keys name it, so that the forwards they time are the padded ones. The transformers backend
pads its own forwards only (not compiled ones: a graph would specialise on every width).
``RESTDECODE_HEAD_PADDING=0`` turns padding off.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FORMAT_VERSION = 2  # 2: medians of 5 passes
MAX_WIDTH = 64  # row counts timed: the widest forwards the planners build are about this wide
SLACK = 8  # pad by at most this many rows
GAIN = 0.9  # pad only where it saves at least 10% of the head's time
_TABLE = "_restdecode_head_widths"  # the installed table, on the head module
_KNOWN: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # CPU model -> table or None


def measure_head_widths(head: torch.nn.Linear, *, max_width: int = MAX_WIDTH,
                        passes: int = 5, slack: int = SLACK, gain: float = GAIN
                        ) -> tuple[int, ...]:
    """For each row count ``m`` in ``1..max_width``, the count the head is run at: the cheapest
    of ``m..m + slack`` (within ``max_width``), where it takes under ``gain`` of ``m``'s time,
    else ``m``. Each count is timed ``passes`` times, in passes over all counts, and judged by
    its median (the fastest of three let one lucky 12-row product, 25 ms at the median, stand
    for 8 rows' 15 ms)."""
    if max_width < 1 or passes < 1 or slack < 0 or not 0 < gain <= 1:
        raise ValueError("need max_width >= 1, passes >= 1, slack >= 0 and 0 < gain <= 1")
    weight, bias = head.weight, head.bias
    inputs = torch.randn(max_width, weight.shape[1], generator=torch.Generator().manual_seed(0))
    inputs = inputs.to(device=weight.device, dtype=weight.dtype)
    samples: list[list[float]] = [[] for _ in range(max_width)]
    with torch.inference_mode():
        F.linear(inputs[:1], weight, bias)  # first call: allocations, kernel setup
        for _ in range(passes):
            for m in range(1, max_width + 1):
                started = time.perf_counter()
                F.linear(inputs[:m], weight, bias)
                samples[m - 1].append(time.perf_counter() - started)
    seconds = [sorted(times)[len(times) // 2] for times in samples]
    widths = []
    for m in range(1, max_width + 1):
        best = min(range(m, min(m + slack, max_width) + 1), key=lambda w: seconds[w - 1])
        widths.append(best if seconds[best - 1] < gain * seconds[m - 1] else m)
    return tuple(widths)


def padded_width(widths: tuple[int, ...], rows: int) -> int:
    """The row count ``rows`` rows of hidden states go through the head at."""
    return widths[rows - 1] if 0 < rows <= len(widths) else rows


def _padded_forward(self: torch.nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    rows = hidden.numel() // hidden.shape[-1]
    width = padded_width(getattr(self, _TABLE), rows)
    if width == rows or torch.compiler.is_compiling():
        return F.linear(hidden, self.weight, self.bias)
    flat = hidden.reshape(rows, hidden.shape[-1])
    padded = torch.cat([flat, flat.new_zeros(width - rows, flat.shape[1])])
    return F.linear(padded, self.weight, self.bias)[:rows].reshape(*hidden.shape[:-1], -1)


@contextmanager
def padded_head(model: "PreTrainedModel", widths: tuple[int, ...] | None) -> Iterator[None]:
    """Within the block, ``model``'s output head runs at ``widths``
    (:func:`measure_head_widths`); nothing changes with ``widths=None``. The head stays the same
    module with the same (tied) weights; only its ``forward`` is replaced on that instance,
    and restored after: outside restdecode's own forwards (``model.generate``, say) the model
    is untouched."""
    head = model.get_output_embeddings() if widths is not None else None
    if head is None or hasattr(head, _TABLE):
        yield
        return
    setattr(head, _TABLE, widths)
    head.forward = types.MethodType(_padded_forward, head)
    try:
        yield
    finally:
        del head.forward
        delattr(head, _TABLE)


def table_digest(widths: tuple[int, ...]) -> str:
    """A short name of a table, for the latency profiles' keys."""
    return hashlib.sha256(json.dumps(list(widths)).encode()).hexdigest()[:12]


def head_widths_for(model: "PreTrainedModel", cache_dir: str | os.PathLike | None = None
                    ) -> tuple[int, ...] | None:
    """The padding table of a CPU model whose head is a plain ``Linear``, cached for this
    model and machine (measured on first use: a few seconds), or None: on other devices, where
    width is nearly free, where padding saves nothing, or with ``RESTDECODE_HEAD_PADDING=0``."""
    from restdecode.latency import profile_key, profiles_dir

    head = model.get_output_embeddings()
    if (os.environ.get("RESTDECODE_HEAD_PADDING", "1") == "0" or model.device.type != "cpu"
            or type(head) is not torch.nn.Linear):
        return None
    if cache_dir is None and model in _KNOWN:
        return _KNOWN[model]
    key = profile_key(model) | {"kind": "head-widths", "max_width": MAX_WIDTH, "slack": SLACK}
    path = _table_path(key, profiles_dir() if cache_dir is None else cache_dir)
    widths = _read_table(path, key)
    if widths is None:
        widths = measure_head_widths(head)
        _write_table(path, key, widths)
    useful = widths if any(w != m for m, w in enumerate(widths, start=1)) else None
    if cache_dir is None:
        _KNOWN[model] = useful
    return useful


def _table_path(key: dict, cache_dir: str | os.PathLike) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"head-widths-{digest}.json"


def _read_table(path: Path, key: dict) -> tuple[int, ...] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("format_version") != FORMAT_VERSION or data.get("key") != key:
        return None
    widths = data.get("widths")
    if not isinstance(widths, list) or len(widths) != key["max_width"]:
        return None
    return tuple(int(w) for w in widths)


def _write_table(path: Path, key: dict, widths: tuple[int, ...]) -> None:
    from restdecode.latency import _save_json

    _save_json({"format_version": FORMAT_VERSION, "key": key, "widths": list(widths)}, path)

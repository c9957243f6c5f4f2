"""How long one verification forward takes, by tree size and cache length: a measured profile.

On a CPU, verifying a tree is not free: a forward over 65 tokens costs about three plain steps for
SmolLM2-135M on 2 cores, and the curve is not even monotonic (kernels switch shapes). Drafting
must therefore size its trees by a *measured* cost curve, one per model, machine, thread count and
dtype. :func:`profile_for` measures it once (seconds) and caches it as JSON under
``restdecode_home() / "profiles"``.

Conventions: ``width`` = tokens in one verification forward = 1 (the pending token) + draft
nodes, so width 1 is a plain decoding step; ``cache_length`` = positions already in the KV cache.

Decision on non-monotonic curves: :meth:`LatencyProfile.predict` returns the measured curve as
is, not its lower envelope ``min over w' >= w of cost(w')``. The envelope is only a true cost if
trees are padded up to the cheaper width, which nothing implements. And for a planner that
maximises expected tokens per second over nested trees, the raw curve already gets the benefit:
if a bigger width is cheaper, the bigger tree (more expected tokens, less time) wins by itself
whenever the candidate tree has the nodes to fill it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from restdecode.backends import as_backend
from restdecode.compiled import COMPILE_OPTIONS, eager, is_compiled
from restdecode.drafting.tree import DraftTree

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Every width up to 32: on a CPU, GEMM speed jumps between neighbouring row counts (SmolLM2
# on 2 cores: 13 tokens cost ~1.5x what 16 cost), so interpolating between sparse widths would
# miss exactly the shapes the planner should avoid.
DEFAULT_WIDTHS: tuple[int, ...] = tuple(range(1, 33)) + (40, 48, 64)
DEFAULT_CACHE_LENGTHS: tuple[int, ...] = (128, 512)
# A batched forward verifies one pending token per row plus the planned nodes, over every row's
# cache together: wider and longer than one sequence's (8 rows of 128 tokens: 1,024 cached keys).
# Its grid: rows verified x draft nodes among them x the cache all rows hold.
BATCH_ROWS: tuple[int, ...] = (1, 2, 4, 8, 16)
BATCH_NODES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
BATCH_CACHE_LENGTHS: tuple[int, ...] = (256, 1024, 4096)
FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class LatencyProfile:
    """Measured seconds of one verification forward on a grid of widths x cache lengths.

    * ``widths``: increasing token counts per forward (1 = a plain step);
    * ``cache_lengths``: increasing KV cache lengths the widths were measured at;
    * ``seconds``: ``(len(cache_lengths), len(widths))`` median seconds per forward;
    * ``key``: what the measurement is valid for (model, machine, threads, dtype, ...).
    """

    widths: tuple[int, ...]
    cache_lengths: tuple[int, ...]
    seconds: np.ndarray
    key: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        widths = tuple(int(w) for w in self.widths)
        cache_lengths = tuple(int(c) for c in self.cache_lengths)
        shape = (len(cache_lengths), len(widths))
        seconds = np.asarray(self.seconds, dtype=np.float64).reshape(shape)
        if not widths or widths[0] < 1 or any(b <= a for a, b in zip(widths, widths[1:])):
            raise ValueError(f"widths must be increasing and >= 1, got {widths}")
        if not cache_lengths or cache_lengths[0] < 0 or any(
            b <= a for a, b in zip(cache_lengths, cache_lengths[1:])
        ):
            raise ValueError(f"cache lengths must be increasing and >= 0, got {cache_lengths}")
        if not np.all(np.isfinite(seconds)) or np.any(seconds <= 0):
            raise ValueError("seconds must be finite and positive")
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "cache_lengths", cache_lengths)
        object.__setattr__(self, "seconds", seconds)

    def predict(self, width: float | np.ndarray, cache_length: float) -> float | np.ndarray:
        """Predicted seconds of a forward of ``width`` tokens on a cache of ``cache_length``.

        Piecewise linear in both. Beyond the measured range, a width or cache length is
        extrapolated along the last measured segment (never downwards: extra tokens or cache
        never save time); below it, the smallest measurement is used. ``width`` may be an array.
        """
        rows = [self._row_at_width(row, width) for row in self.seconds]
        predicted = _interpolate_rows(self.cache_lengths, rows, float(cache_length))
        return float(predicted) if np.ndim(predicted) == 0 else predicted

    def _row_at_width(self, row: np.ndarray, width: float | np.ndarray) -> np.ndarray:
        return _extrapolating_interp(np.asarray(width, dtype=np.float64), self.widths, row)

    def to_json(self) -> dict:
        """A JSON-ready dict; :meth:`from_json` reads it back."""
        return {
            "format_version": FORMAT_VERSION,
            "key": self.key,
            "widths": list(self.widths),
            "cache_lengths": list(self.cache_lengths),
            "seconds": self.seconds.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "LatencyProfile":
        """The profile stored by :meth:`to_json`; ValueError for another format version."""
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported latency profile format {data.get('format_version')!r}")
        if data.get("kind", "single") != "single":
            raise ValueError(f"a {data['kind']} latency profile, not a single-sequence one")
        return cls(tuple(data["widths"]), tuple(data["cache_lengths"]), np.array(data["seconds"]),
                   dict(data.get("key", {})))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON at ``path`` atomically (a temporary file renamed)."""
        return _save_json(self.to_json(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyProfile":
        """The profile saved at ``path``."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def grid(self) -> dict:
        """The measurement options this profile answers (for the cache's check)."""
        return {"widths": self.widths, "cache_lengths": self.cache_lengths}


def _save_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON at ``path`` atomically (a temporary file renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temp, path)
    return path


def _extrapolating_interp(x: np.ndarray, xs: Sequence[float], ys: np.ndarray) -> np.ndarray:
    """``np.interp`` inside ``xs``; beyond the last point, the last segment's slope (>= 0)."""
    inside = np.interp(x, xs, ys)
    if len(xs) < 2:
        return inside
    slope = max(0.0, (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
    return np.where(x > xs[-1], ys[-1] + slope * (x - xs[-1]), inside)


def _interpolate_rows(cache_lengths: Sequence[int], rows: list[np.ndarray], cache_length: float):
    """Blend the per-cache-length predictions linearly in cache length (extrapolating upwards
    along the last segment, never downwards)."""
    if len(rows) == 1 or cache_length <= cache_lengths[0]:
        return rows[0]
    upper = min(int(np.searchsorted(cache_lengths, cache_length)), len(rows) - 1)
    lower = upper - 1
    fraction = (cache_length - cache_lengths[lower]) / (cache_lengths[upper] - cache_lengths[lower])
    blended = rows[lower] + fraction * (rows[upper] - rows[lower])
    if cache_length > cache_lengths[-1]:
        blended = np.maximum(blended, rows[upper])  # a longer cache is never faster
    return blended


# --- measurement ----------------------------------------------------------------------------


def measure_profile(
    model,
    widths: Sequence[int] = DEFAULT_WIDTHS,
    cache_lengths: Sequence[int] = DEFAULT_CACHE_LENGTHS,
    *,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> LatencyProfile:
    """Time real verification forwards of ``model`` (a transformers model or a
    :class:`~restdecode.backends.Backend`) and return the profile (median seconds).

    For every cache length, a session is prefilled with random tokens; then, in ``1 + repeats``
    rounds (the first a warm-up), every width is verified once, in a shuffled order, as a random
    tree of ``width - 1`` nodes through the backend's own ``verify`` (on transformers: 4D tree
    mask, position ids), and its slots are dropped again. Rounds spread any background load over
    all widths instead of biasing a few.
    """
    from tqdm.auto import tqdm

    backend = as_backend(model)
    widths, cache_lengths = sorted(set(widths)), sorted(set(cache_lengths))
    _check_fits(backend, max(widths), max(cache_lengths))
    rng = np.random.default_rng(seed)
    vocab = backend.vocab_size
    trees = {w: random_tree(w - 1, vocab, rng).compile(backend.device) for w in widths}
    seconds = np.empty((len(cache_lengths), len(widths)))
    total = len(cache_lengths) * len(widths) * (1 + repeats)
    with torch.inference_mode(), tqdm(total=total, desc="latency profile", unit="fwd",
                                      disable=not progress, leave=False) as bar:
        for row, cache_length in enumerate(cache_lengths):
            session = _filled_session(backend, cache_length, rng)

            def forward(width: int) -> float:
                elapsed = _seconds(backend.device, session.verify, int(rng.integers(0, vocab)),
                                   trees[width])
                session.commit([])  # drop every slot: back to the same cache length
                return elapsed

            seconds[row] = _timed_rounds(widths, repeats, rng, bar, forward)
    return LatencyProfile(tuple(widths), tuple(cache_lengths), seconds, backend.profile_key())


def measure_batch_profile(
    model,
    nodes: Sequence[int] = BATCH_NODES,
    cache_lengths: Sequence[int] = BATCH_CACHE_LENGTHS,
    *,
    rows: Sequence[int] = BATCH_ROWS,
    repeats: int = 3,
    seed: int = 0,
    progress: bool = True,
) -> "BatchLatencyProfile":
    """Time real *batched* verification forwards of ``model`` (a transformers model or a
    :class:`~restdecode.backends.BatchBackend`): the profile of ``BatchSession.verify``.

    Its axes: ``rows`` verified in the forward (each with its pending token), ``nodes`` of draft
    trees among them, and ``cache_length`` = KV positions of all rows together. For every row
    count R and cache length, a batch session holds R rows sharing the cache equally; ``k``
    nodes are verified as random trees of about two nodes on randomly chosen rows (the batch
    planner gives a few rows trees and the others plain steps), the other rows plain. Rounds
    and shuffling as in :func:`measure_profile`; every step is dropped again.
    """
    from tqdm.auto import tqdm

    from restdecode.backends import open_batch_session

    backend = as_backend(model)
    nodes, cache_lengths = sorted(set(nodes)), sorted(set(cache_lengths))
    rows = sorted(set(rows))
    rng = np.random.default_rng(seed)
    vocab = backend.vocab_size
    by_rows = {}
    shares_by_rows = {count: sorted({max(1, c // count) for c in cache_lengths}) for count in rows}
    total = sum(map(len, shares_by_rows.values())) * len(nodes) * (1 + repeats)
    with torch.inference_mode(), tqdm(total=total, desc="batch latency profile", unit="fwd",
                                      disable=not progress, leave=False) as bar:
        for count in rows:
            shapes = {k: _batch_trees(k, count, vocab, rng, backend.device) for k in nodes}
            shares = shares_by_rows[count]
            seconds = np.empty((len(shares), len(nodes)))
            for index, share in enumerate(shares):
                session = open_batch_session(backend)
                _check_fits(backend, 1 + max(nodes), share)
                row_ids = [session.add_row(rng.integers(0, vocab, share).tolist())[0]
                           for _ in range(count)]

                def forward(k: int) -> float:
                    items = [(row_ids[i], int(rng.integers(0, vocab)), tree)
                             for i, tree in enumerate(shapes[k])]
                    elapsed = _seconds(backend.device, session.verify, items)
                    for row, _, _ in items:
                        session.commit(row, [])  # drop every slot: the cache stays as it was
                    return elapsed

                seconds[index] = _timed_rounds(nodes, repeats, rng, bar, forward)
            by_rows[count] = LatencyProfile(tuple(count + k for k in nodes),
                                            tuple(share * count for share in shares), seconds)
    key = backend.profile_key() | {"layout": batch_layout(backend)}
    return BatchLatencyProfile(by_rows, key, tuple(cache_lengths))


@dataclass(frozen=True, eq=False)
class BatchLatencyProfile:
    """Measured seconds of one batched verification forward, by the rows it verifies, its
    width and the cache all rows hold: one :class:`LatencyProfile` per measured row count R,
    whose widths are R + draft nodes and whose cache lengths are totals over the R rows.

    The row count matters beside the width: 16 rows' pending tokens cost less than 8 rows with
    8 draft nodes (plain rows share one attention call; trees are padded to the widest),
    and the planner's question is what k more nodes cost on top of R rows.
    """

    by_rows: dict[int, LatencyProfile]
    key: dict = field(default_factory=dict)
    cache_lengths: tuple[int, ...] = ()  # the totals asked for (each row count rounds them)

    def __post_init__(self) -> None:
        if not self.by_rows or any(int(r) < 1 for r in self.by_rows):
            raise ValueError("a batch profile needs row counts >= 1")
        object.__setattr__(self, "by_rows",
                           {int(r): self.by_rows[r] for r in sorted(self.by_rows, key=int)})
        object.__setattr__(self, "cache_lengths", tuple(int(c) for c in self.cache_lengths))

    @property
    def rows(self) -> tuple[int, ...]:
        """The measured row counts, increasing."""
        return tuple(self.by_rows)

    def predict(self, width: float | np.ndarray, cache_length: float, rows: float = 1
                ) -> float | np.ndarray:
        """Predicted seconds of a forward verifying ``rows`` rows and ``width - rows`` draft
        nodes over ``cache_length`` cached positions in all. Between measured row counts, the
        two neighbours' predictions for the same number of nodes are blended linearly; beyond
        the largest, extrapolated along the last two (never downwards)."""
        nodes = np.asarray(width, dtype=np.float64) - rows
        counts = self.rows
        if len(counts) == 1 or rows <= counts[0]:
            return self.by_rows[counts[0]].predict(counts[0] + nodes, cache_length)
        upper = min(int(np.searchsorted(counts, rows)), len(counts) - 1)
        lower = upper - 1
        low = self.by_rows[counts[lower]].predict(counts[lower] + nodes, cache_length)
        high = self.by_rows[counts[upper]].predict(counts[upper] + nodes, cache_length)
        fraction = (rows - counts[lower]) / (counts[upper] - counts[lower])
        blended = low + fraction * (high - low)
        if rows > counts[-1]:
            blended = np.maximum(blended, high)  # more rows are never faster
        return float(blended) if np.ndim(blended) == 0 else blended

    def for_rows(self, rows: int) -> "CostModel":
        """This profile as a :class:`~restdecode.drafting.planner.CostModel` of forwards that
        verify ``rows`` rows (``predict(width, cache_length)``, width = rows + nodes)."""
        return _RowsCost(self, rows)

    def to_json(self) -> dict:
        """A JSON-ready dict; :meth:`from_json` reads it back."""
        return {"format_version": FORMAT_VERSION, "kind": "batch", "key": self.key,
                "cache_lengths": list(self.cache_lengths),
                "by_rows": {str(r): p.to_json() for r, p in self.by_rows.items()}}

    @classmethod
    def from_json(cls, data: dict) -> "BatchLatencyProfile":
        """The profile stored by :meth:`to_json`; ValueError for another format or kind."""
        if data.get("format_version") != FORMAT_VERSION or data.get("kind") != "batch":
            raise ValueError("not a batch latency profile of this format")
        return cls({int(r): LatencyProfile.from_json(p) for r, p in data["by_rows"].items()},
                   dict(data.get("key", {})), tuple(data.get("cache_lengths", ())))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile as JSON at ``path`` atomically."""
        return _save_json(self.to_json(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BatchLatencyProfile":
        """The profile saved at ``path``."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def grid(self) -> dict:
        """The measurement options this profile answers (for the cache's check)."""
        first = next(iter(self.by_rows.values()))
        return {"rows": self.rows, "nodes": tuple(w - self.rows[0] for w in first.widths),
                "cache_lengths": self.cache_lengths}


@dataclass(frozen=True)
class _RowsCost:
    """A batch profile's prices for forwards of a fixed number of rows."""

    profile: BatchLatencyProfile
    rows: int

    def predict(self, width: float | np.ndarray, cache_length: float) -> float | np.ndarray:
        return self.profile.predict(width, cache_length, self.rows)


def batch_layout(backend) -> str:
    """The name of ``backend``'s batched cache layout: a profile measured on another layout
    prices other forwards, so it is part of the profile's key."""
    return getattr(backend, "batch_layout", "batch")


def _batch_trees(nodes: int, rows: int, vocab: int, rng: np.random.Generator, device):
    """Compiled trees for ``rows`` rows holding ``nodes`` nodes in all: about two nodes on each
    of ``ceil(nodes / 2)`` randomly chosen rows (at least one each), the other rows plain."""
    holders = rng.permutation(rows)[:min(rows, -(-nodes // 2))]
    counts = np.zeros(rows, dtype=int)
    counts[holders] = 1
    np.add.at(counts, rng.choice(holders, nodes - len(holders)) if len(holders) else [], 1)
    return [random_tree(int(n), vocab, rng).compile(device) for n in counts]


def random_tree(num_nodes: int, vocab_size: int, rng: np.random.Generator) -> DraftTree:
    """A tree of ``num_nodes`` random tokens, each node below a random earlier node or the root."""
    parents = [int(rng.integers(-1, i)) for i in range(num_nodes)]
    tokens = rng.integers(0, vocab_size, num_nodes)
    return DraftTree(tokens, np.array(parents, dtype=np.int64))


def _timed_rounds(widths: Sequence[int], repeats: int, rng: np.random.Generator, bar,
                  forward: Callable[[int], float]) -> list[float]:
    """Median seconds of ``forward(width)`` (one timed forward of that width, dropped again)
    per width, over ``repeats`` rounds after one warm-up round, each round in a shuffled order."""
    timings: dict[int, list[float]] = {w: [] for w in widths}
    for round_index in range(1 + repeats):
        for width in rng.permutation(list(widths)).tolist():
            elapsed = forward(width)
            if round_index > 0:
                timings[width].append(elapsed)
            bar.update()
    return [float(np.median(timings[w])) for w in widths]


def _seconds(device: torch.device, call: Callable, *args) -> float:
    """Wall seconds of ``call(*args)``, its queued accelerator work included."""
    started = time.perf_counter()
    call(*args)
    _synchronize(device)
    return time.perf_counter() - started


def _synchronize(device: torch.device) -> None:
    """Wait for the accelerator's queued work (a CUDA forward returns before it has run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _filled_session(backend, cache_length: int, rng: np.random.Generator):
    """A backend session holding ``cache_length`` random tokens."""
    session = backend.session()
    if cache_length > 0:
        session.prefill(rng.integers(0, backend.vocab_size, cache_length).tolist())
    return session


def fitting_grid(model, widths: Sequence[int], cache_lengths: Sequence[int]
                 ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``widths`` and ``cache_lengths`` cut to what the model's context holds (a short-context
    model gets widths up to half its context and one cache length that leaves room for them)."""
    limit = as_backend(model).context_limit
    widths, cache_lengths = sorted(set(widths)), sorted(set(cache_lengths))
    if limit is None:
        return tuple(widths), tuple(cache_lengths)
    widths = [w for w in widths if w <= max(1, limit // 2)] or [1]
    room = limit - max(widths)
    cache_lengths = [c for c in cache_lengths if c <= room] or [max(0, room)]
    return tuple(widths), tuple(cache_lengths)


def _check_fits(backend, max_width: int, max_cache_length: int) -> None:
    limit = backend.context_limit
    if limit is not None and max_cache_length + max_width > limit:
        raise ValueError(f"cache length {max_cache_length} + width {max_width} exceeds the "
                         f"model's {limit} positions")


# --- cache of measured profiles ------------------------------------------------------------


def profile_key(model: "PreTrainedModel") -> dict:
    """What a transformers model's timings depend on: model (name + config hash), attention
    implementation, dtype, device, CPU model, core count, torch threads and version."""
    config_json = model.config.to_json_string(use_diff=False)
    key = {
        "model": str(getattr(model.config, "_name_or_path", "") or type(eager(model)).__name__),
        "config_sha256": hashlib.sha256(config_json.encode()).hexdigest()[:16],
        "attention": str(getattr(model.config, "_attn_implementation", "")),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": _device_name(model.device),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if is_compiled(model):  # only then, so that eager profiles keep their keys
        key["compiled"] = json.dumps(COMPILE_OPTIONS, sort_keys=True)
    return key


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def profile_path(key: dict, cache_dir: str | os.PathLike) -> Path:
    """The JSON file of the profile with ``key``: readable model name + hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key.get("model", "model")).name)[:60] or "model"
    return Path(cache_dir) / f"{name}-{digest}.json"


def profiles_dir() -> Path:
    """Where measured profiles are cached: ``restdecode_home() / "profiles"``."""
    from restdecode.assets import restdecode_home

    return restdecode_home() / "profiles"


def profile_for(
    model: "PreTrainedModel",
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    progress: bool = True,
    **measure_options,
) -> LatencyProfile:
    """The latency profile of ``model`` on this machine: cached, else measured and cached.

    ``cache_dir`` defaults to :func:`profiles_dir`; ``refresh`` measures again;
    ``measure_options`` go to :func:`measure_profile`; the grid (default: every width up to 32,
    then 40, 48, 64, at cache lengths 128 and 512) is cut to the model's context by
    :func:`fitting_grid`, and a cached profile is reused only if it was measured on that grid.
    """
    options = {"widths": DEFAULT_WIDTHS, "cache_lengths": DEFAULT_CACHE_LENGTHS} | measure_options
    options["widths"], options["cache_lengths"] = fitting_grid(model, options["widths"],
                                                               options["cache_lengths"])
    key = as_backend(model).profile_key()
    return _cached_or_measured(measure_profile, model, key, cache_dir, refresh, progress, options)


def batch_profile_for(
    model: "PreTrainedModel",
    *,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
    progress: bool = True,
    **measure_options,
) -> BatchLatencyProfile:
    """The *batched* latency profile of ``model`` on this machine (:func:`measure_batch_profile`,
    which ``measure_options`` go to): cached beside the single-sequence one, else measured
    (about three minutes for SmolLM2-135M on 2 cores) and cached. The grid is cut so that the
    largest cache, one pending token per row and the most nodes fit the model's context (on
    llama.cpp every row shares one context's cells)."""
    options = {"nodes": BATCH_NODES, "cache_lengths": BATCH_CACHE_LENGTHS,
               "rows": BATCH_ROWS} | measure_options
    backend = as_backend(model)
    limit, most_rows = backend.context_limit, max(options["rows"])
    if limit is not None:
        nodes = [k for k in options["nodes"] if 1 + k <= max(1, limit // 2)] or [0]
        room = limit - most_rows - max(nodes)
        options["nodes"] = tuple(nodes)
        options["cache_lengths"] = tuple(c for c in options["cache_lengths"] if c <= room
                                         ) or (max(most_rows, room),)
    key = backend.profile_key() | {"layout": batch_layout(backend)}
    return _cached_or_measured(measure_batch_profile, model, key, cache_dir, refresh, progress,
                               options, BatchLatencyProfile)


def _cached_or_measured(measure, model, key: dict, cache_dir, refresh: bool, progress: bool,
                        options: dict, kind=LatencyProfile):
    """The profile (of class ``kind``) cached under ``key`` on the grid of ``options``, else
    ``measure(model, **options)`` saved there."""
    path = profile_path(key, profiles_dir() if cache_dir is None else cache_dir)
    if not refresh:
        cached = _read_cached(path, key, options, kind)
        if cached is not None:
            return cached
    profile = measure(model, progress=progress, **options)
    profile.save(path)
    return profile


def _read_cached(path: Path, key: dict, measure_options: dict, kind=LatencyProfile):
    """The profile at ``path`` if it is readable, for ``key``, and on the requested grid."""
    try:
        profile = kind.load(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # missing, or corrupt / an older format: measure again
    if profile.key != key:
        return None
    for option, measured in profile.grid().items():
        wanted = measure_options.get(option)
        if wanted is not None and tuple(sorted(set(wanted))) != measured:
            return None
    return profile

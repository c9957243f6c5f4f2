"""Acceptance by depth, per method, from a `restdecode bench` results file (issue 17).

Not a test. Every decoding step of a method commits its accepted draft tokens plus the bonus
token; this reads each row's ``accepted_per_step`` and reports, per method:

  steps            decoding steps, all rows
  tokens/step      mean tokens committed per step (= tokens per forward)
  1-token steps    share of steps that committed the bonus token only
  >= d             share of steps whose accepted draft reached depth d (committed >= d + 1)
  d | d-1          acceptance at depth d given depth d - 1 was accepted (the conditional rate)

A method that drafts from one source (``restdecode`` = retrieval + context, ``draft-model`` =
the trained drafter alone) gives that source's acceptance by depth; a merged method's nodes are
not attributed to their sources here.

    .venv/bin/python bench/acceptance_depth.py bench/results/heads-2026-11-26/results.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def load_run(path: Path) -> dict:
    """A bench results file (JSON, or gzipped JSON): its settings and rows."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def load_rows(path: Path) -> list[dict]:
    """The result rows of a bench results file (JSON, or gzipped JSON)."""
    return load_run(path)["rows"]


def committed_by_method(rows: list[dict]) -> dict[str, np.ndarray]:
    """Tokens committed at every step, all rows of each method together (the methods in the
    file's order)."""
    steps: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        steps[row["method"]] += [int(n) for n in row["accepted_per_step"]]
    return {method: np.asarray(values) for method, values in steps.items()}


def depth_table(committed: dict[str, np.ndarray], depths: int = 6) -> str:
    """The markdown table described in the module docstring."""
    header = (["method", "steps", "tokens/step", "1-token steps"]
              + [f">= {d}" for d in range(1, depths + 1)]
              + [f"{d} given {d - 1}" for d in range(2, depths + 1)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, counts in committed.items():
        if counts.size == 0:
            continue
        reached = [float(np.mean(counts >= d + 1)) for d in range(0, depths + 1)]  # [1.0, ...]
        conditional = [reached[d] / reached[d - 1] if reached[d - 1] else float("nan")
                       for d in range(2, depths + 1)]
        cells = ([method, f"{counts.size:,}", f"{counts.mean():.2f}",
                  f"{np.mean(counts == 1):.0%}"]
                 + [f"{reached[d]:.0%}" for d in range(1, depths + 1)]
                 + [f"{c:.0%}" if c == c else "-" for c in conditional])  # NaN: never reached
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json or results.json.gz of a bench run")
    parser.add_argument("--depths", type=int, default=6)
    args = parser.parse_args(argv)
    if not args.results.exists():
        parser.error(f"{args.results} does not exist")
    print(depth_table(committed_by_method(load_rows(args.results)), args.depths))
    return 0


if __name__ == "__main__":
    sys.exit(main())

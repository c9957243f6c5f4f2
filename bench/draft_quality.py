"""Draft quality node for node: tokens per forward against mean draft nodes per step.

Replays a bench run's recorded hf-greedy outputs (no model forward: restdecode.benchmark.replay)
through planned drafters whose per-node verification cost is swept, so that each configuration
traces a curve of (mean nodes verified per step, tokens committed per forward); the table then
reads every curve at the same draft sizes (linear interpolation), which is how drafters compare
when verification has a price. Drafters are kept across prompts, in the run's order, so memories
and calibrations carry over as in a served model.

    .venv/bin/python bench/draft_quality.py bench/results/<run>/results.json.gz \
        --datastore FILE [--configs default,memory,...] [--costs ...] [--sizes 2,4,8,16] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_COSTS = "0.004,0.01,0.02,0.04,0.08,0.15,0.3,0.6"


class LinearCost:
    """A verification costing 1 + ``per_node`` x nodes (plain step = 1)."""

    def __init__(self, per_node: float) -> None:
        self.per_node = per_node

    def predict(self, widths, cache_length):
        return 1.0 + self.per_node * (np.asarray(widths, dtype=np.float64) - 1)


def planned(datastore, cost, *, memory: bool = False, weights=None, match_power: float = 0.0):
    """The default drafter's shape (retrieval + context or memory, 48 candidates, planned), with
    the merge's source weights and match-length power as given."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, PlannedDrafter,
                                     RetrievalDrafter, default_memory)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    context = default_memory() if memory else ContextDrafter(span=CONTEXT_SPAN)
    sources = [RetrievalDrafter(datastore), context]
    for source in sources:
        source.budget = CANDIDATE_BUDGET
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=weights,
                             match_power=match_power)
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


def configurations(datastore):
    """name -> (cost -> drafter): the drafters compared."""
    from restdecode.drafting import default_drafter, default_memory

    variants = {
        "default": lambda cost: default_drafter(datastore, profile=cost),
        "memory": lambda cost: default_drafter(datastore, profile=cost, memory=default_memory()),
    }
    for power in (1.0, 2.0):
        variants[f"memory, match power {power:g}"] = (
            lambda cost, power=power: planned(datastore, cost, memory=True, match_power=power))
    for weight in (3.0,):
        variants[f"memory x{weight:g}"] = (
            lambda cost, weight=weight: planned(datastore, cost, memory=True, weights=[1, weight]))
    return variants


def load_run(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return json.load(file)


def curve(make, costs, prompts, prompt_ids, outputs):
    """(nodes per step, tokens per forward, draft ms per step) for each cost."""
    from restdecode.benchmark.replay import replay

    tokens = sum(len(outputs[p.id]) for p in prompts)
    points = []
    for per_node in costs:
        drafter = make(LinearCost(per_node))
        started = time.perf_counter()
        steps = [s for p in prompts for s in replay(drafter, prompt_ids[p.id], outputs[p.id])]
        elapsed = time.perf_counter() - started
        nodes = float(np.mean([s.nodes for s in steps]))
        points.append((nodes, tokens / (len(prompts) + len(steps)), 1000 * elapsed / len(steps)))
    return sorted(points)


def at_size(points, size: float) -> float | None:
    """Tokens per forward at ``size`` nodes per step, interpolated (None outside the curve)."""
    nodes = [p[0] for p in points]
    if not nodes or size < nodes[0] or size > nodes[-1]:
        return None
    return float(np.interp(size, nodes, [p[1] for p in points]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json(.gz) of a bench run")
    parser.add_argument("--datastore", type=Path, required=True, help="datastore to draft from")
    parser.add_argument("--configs", default=None, help="comma-separated configuration names")
    parser.add_argument("--costs", default=DEFAULT_COSTS, help="per-node costs to sweep")
    parser.add_argument("--sizes", default="2,4,8,16", help="draft sizes to read the curves at")
    parser.add_argument("--limit", type=int, help="first N prompts only")
    args = parser.parse_args()

    from restdecode.benchmark.runner import encode_prompt
    from restdecode.datastore import Datastore
    from restdecode.models import load_tokenizer
    from restdecode.workloads import load_workload

    run = load_run(args.results)
    outputs = {row["prompt_id"]: row["token_ids"] for row in run["rows"]
               if row["method"] == "hf-greedy" and row["turn"] == 1}
    tokenizer = load_tokenizer(run["model"]["name"])
    datastore = Datastore.open(args.datastore, tokenizer)
    prompts = [p for p in load_workload(run["workload"]) if p.id in outputs][: args.limit]
    prompt_ids = {p.id: encode_prompt(tokenizer, p.text, p.messages)[0].tolist() for p in prompts}
    available = configurations(datastore)
    names = args.configs.split(",") if args.configs else list(available)
    costs = [float(c) for c in args.costs.split(",")]
    sizes = [float(s) for s in args.sizes.split(",")]

    print(f"{run['workload']}: {len(prompts)} prompts, {args.datastore.name}")
    print("| drafter | " + " | ".join(f"tok/fwd @ {s:g} nodes" for s in sizes)
          + " | curve (nodes: tok/fwd) | draft ms/step |")
    print("|---|" + "---|" * (len(sizes) + 2))
    for name in names:
        points = curve(available[name], costs, prompts, prompt_ids, outputs)
        read = [at_size(points, s) for s in sizes]
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in read)
        path = ", ".join(f"{n:.1f}: {t:.2f}" for n, t, _ in points)
        ms = f"{min(p[2] for p in points):.2f}-{max(p[2] for p in points):.2f}"
        print(f"| {name} | {cells} | {path} | {ms} |", flush=True)


if __name__ == "__main__":
    main()

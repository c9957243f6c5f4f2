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


def planned(datastore, cost, *, memory: bool = False, weights=None, match_power: float = 0.0,
            retrieval: bool = True, context_options: dict | None = None):
    """The default drafter's shape (retrieval + context or memory, 48 candidates, planned), with
    the merge's source weights and match-length power as given."""
    from restdecode.drafting import (CombinedDrafter, ContextDrafter, PlannedDrafter,
                                     RetrievalDrafter, default_memory)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    from restdecode.drafting import MemoryDrafter

    options = {"span": CONTEXT_SPAN} | (context_options or {})
    context = MemoryDrafter(**options) if memory else ContextDrafter(**options)
    sources = [RetrievalDrafter(datastore), context] if retrieval else [context]
    for source in sources:
        source.budget = CANDIDATE_BUDGET
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=weights,
                             match_power=match_power)
    return PlannedDrafter(merged, cost, overhead=STEP_OVERHEAD_S)


class MaxMergeDrafter:
    """Experimental merge: a path weighs the *largest* of its sources' path probabilities (times
    the source's weight), not their normalised sum, so a source sure of a path keeps its
    confidence whatever the other sources propose."""

    def __init__(self, sources, *, budget: int, weights=None):
        self.sources = list(sources)
        self.budget = budget
        self.weights = weights or [1.0] * len(self.sources)

    def propose(self, token_ids):
        from restdecode.drafting import DraftTree

        weight: dict[tuple, float] = {}
        order: dict[tuple, int] = {}
        match_length = 0
        for source, source_weight in zip(self.sources, self.weights):
            tree = source.propose(token_ids)
            match_length = max(match_length, tree.match_length)
            probability = np.empty(len(tree))
            keys: list[tuple] = []
            scores = tree.scores if tree.scores is not None else np.ones(len(tree))
            for node, parent in enumerate(tree.parents.tolist()):
                above = probability[parent] if parent >= 0 else 1.0
                probability[node] = above * min(max(float(scores[node]), 0.0), 1.0)
                key = (keys[parent] if parent >= 0 else ()) + (int(tree.tokens[node]),)
                keys.append(key)
                value = source_weight * probability[node]
                if value > weight.get(key, -1.0):
                    weight[key] = value
                order.setdefault(key, len(order))
        ranked = sorted(weight, key=lambda k: (-weight[k], len(k), order[k]))[: self.budget]
        kept = set(ranked)
        ranked = [k for k in ranked if all(k[:d] in kept for d in range(1, len(k)))]
        index = {key: i for i, key in enumerate(ranked)}
        parents = [index[k[:-1]] if len(k) > 1 else -1 for k in ranked]
        scores = [weight[k] / (weight[k[:-1]] if len(k) > 1 else 1.0) for k in ranked]
        return DraftTree(np.array([k[-1] for k in ranked], dtype=np.int64),
                         np.array(parents, dtype=np.int64), np.array(scores), match_length)

    def observe(self, feedback):
        for source in self.sources:
            source.observe(feedback)

    def reset(self):
        for source in self.sources:
            source.reset()


class DepthCap:
    """Experimental: drafts cut to ``factor`` x match length + ``offset`` deep (SuffixDecoding)."""

    def __init__(self, drafter, factor: float, offset: int = 0):
        self.drafter, self.factor, self.offset = drafter, factor, offset

    def propose(self, token_ids):
        tree = self.drafter.propose(token_ids)
        return tree.subset(tree.depths <= self.factor * tree.match_length + self.offset)

    def observe(self, feedback):
        self.drafter.observe(feedback)

    def reset(self):
        self.drafter.reset()


def capped(datastore, cost, *, factor: float, offset: int = 0, weights=(1, 3)):
    from restdecode.drafting import (CombinedDrafter, MemoryDrafter, PlannedDrafter,
                                     RetrievalDrafter)
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET),
               MemoryDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET)]
    merged = CombinedDrafter(sources, budget=CANDIDATE_BUDGET, weights=list(weights))
    return PlannedDrafter(DepthCap(merged, factor, offset), cost, overhead=STEP_OVERHEAD_S)


def max_merged(datastore, cost, *, weights=None):
    from restdecode.drafting import MemoryDrafter, PlannedDrafter, RetrievalDrafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S

    sources = [RetrievalDrafter(datastore, budget=CANDIDATE_BUDGET),
               MemoryDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET)]
    return PlannedDrafter(MaxMergeDrafter(sources, budget=CANDIDATE_BUDGET, weights=weights),
                          cost, overhead=STEP_OVERHEAD_S)


def depth_grouped(datastore, cost, *, depths: int = 4):
    """Experimental: the planner's calibration also grouped by node depth (1, 2, ..., >= depths)
    within each match-length group."""
    from restdecode.drafting import PlannedDrafter
    from restdecode.drafting.planner import (MATCH_LENGTH_EDGES, AcceptanceCalibration,
                                             match_length_group, plan_tree, raw_scores)

    class NodeGroupedCalibration(AcceptanceCalibration):
        def update(self, tree, accepted_nodes, group=0):
            if len(tree) == 0:
                return
            accepted = np.zeros(len(tree), dtype=bool)
            accepted[np.asarray(list(accepted_nodes), dtype=np.int64)] = True
            tested = (tree.parents < 0) | accepted[np.maximum(tree.parents, 0)]
            bins = self.bucket(raw_scores(tree)[tested])
            groups = np.broadcast_to(group, (len(tree),))[tested]
            np.add.at(self.trials, (groups, bins), 1.0)
            np.add.at(self.successes, (groups, bins), accepted[tested].astype(np.float64))

    class DepthGroupedPlanner(PlannedDrafter):
        def _groups(self, tree):
            return self._match_group * depths + np.minimum(tree.depths - 1, depths - 1)

        def propose(self, token_ids):
            candidate = self.drafter.propose(token_ids)
            self._match_group = match_length_group(candidate)
            return plan_tree(candidate, self.profile, max(len(token_ids) - 1, 0),
                             calibration=self.calibration, overhead=self.overhead,
                             group=self._groups(candidate))

        def observe(self, feedback):
            if len(feedback.tree):
                self.calibration.update(feedback.tree, feedback.accepted_nodes,
                                        self._groups(feedback.tree))
            self.drafter.observe(feedback)

    inner = planned(datastore, cost, memory=True, weights=[1, 3]).drafter
    calibration = NodeGroupedCalibration(groups=(len(MATCH_LENGTH_EDGES) + 1) * depths)
    return DepthGroupedPlanner(inner, cost, calibration=calibration)


def configurations(datastore):
    """name -> (cost -> drafter): the drafters compared."""
    from restdecode.drafting import default_drafter, default_memory

    variants = {
        "default": lambda cost: default_drafter(datastore, profile=cost),
        "memory": lambda cost: default_drafter(datastore, profile=cost, memory=default_memory()),
    }
    for power in (1.0, 2.0):
        variants[f"memory match power {power:g}"] = (
            lambda cost, power=power: planned(datastore, cost, memory=True, match_power=power))
    for weight in (3.0, 10.0):
        variants[f"memory x{weight:g}"] = (
            lambda cost, weight=weight: planned(datastore, cost, memory=True, weights=[1, weight]))
    for factor, offset in ((1.0, 0), (2.0, 2)):
        variants[f"memory x3 depth cap {factor:g}m+{offset}"] = (
            lambda cost, factor=factor, offset=offset: capped(datastore, cost, factor=factor,
                                                              offset=offset))
    variants["memory max merge"] = lambda cost: max_merged(datastore, cost)
    variants["context x3"] = lambda cost: planned(datastore, cost, weights=[1, 3])
    variants["memory x3 depth-grouped calibration"] = lambda cost: depth_grouped(datastore, cost)
    variants["memory only"] = lambda cost: planned(datastore, cost, memory=True, retrieval=False)
    variants["memory x3 suffix 32"] = lambda cost: planned(
        datastore, cost, memory=True, weights=[1, 3], context_options={"max_suffix": 32})
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
    parser.add_argument("--configs", default=None, help="configuration names, separated by semicolons")
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
    names = args.configs.split(";") if args.configs else list(available)
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

"""What the drafts could give: replay a bench run's hf-greedy outputs through drafters.

No model forward runs (restdecode.benchmark.replay): each configuration drafts on the recorded
context, greedy acceptance is read off the recorded output. Tokens per forward are exact for the
drafter as configured (the `rest` row reproduces the measured run's figure); with --profile (a
latency profile JSON from $RESTDECODE_HOME/profiles) each step is priced by the profile, which
shows what a bigger tree would cost. Draft ms per step: the drafter's own time (propose + observe)
per step, on this machine, as it is loaded (tokens per forward do not depend on it).

    .venv/bin/python bench/replay.py bench/results/<run>/results.json.gz \
        [--datastore FILE] [--profile FILE] [--limit N] [--budgets 4,12,48,128,512]

Peers (bench only, never a dependency of restdecode): ``--peer suffix`` adds SuffixDecoding rows
(Arctic Inference 0.3.0, vLLM's method="suffix"; build it first with
bench/peers/build_suffix_decoding.sh), one per combination of the --suffix-* lists, its global
tree holding the past answers of the replay in benchmark order; ``--peers-only`` skips
restdecode's own rows (no datastore needed).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import sys
import time

import numpy as np


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


class Timed:
    """A drafter whose propose and observe calls are timed (reset is not)."""

    def __init__(self, drafter) -> None:
        self.drafter = drafter
        self.seconds = 0.0

    def propose(self, token_ids):
        start = time.perf_counter()
        try:
            return self.drafter.propose(token_ids)
        finally:
            self.seconds += time.perf_counter() - start

    def observe(self, feedback) -> None:
        start = time.perf_counter()
        try:
            self.drafter.observe(feedback)
        finally:
            self.seconds += time.perf_counter() - start

    def reset(self) -> None:
        self.drafter.reset()


def peer_configurations(args) -> dict:
    """SuffixDecoding drafters, one per combination of the --suffix-* lists."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers.suffix_decoding import SuffixDecodingDrafter, load_cache_class

    load_cache_class()  # fail now, with the build instructions, if it is not built
    configurations = {}
    for spec in args.suffix_spec.split(","):
        if spec not in ("chain", "tree"):
            raise SystemExit(f"--suffix-spec: chain or tree, got {spec!r}")
        for factor in floats(args.suffix_max_spec_factor):
            for offset in floats(args.suffix_max_spec_offset):
                for probability in floats(args.suffix_min_prob):
                    name = (f"suffix ({spec}, depth {args.suffix_max_depth}, factor {factor:g}, "
                            f"offset {offset:g}, min prob {probability:g})")
                    configurations[name] = (
                        lambda spec=spec, factor=factor, offset=offset, probability=probability:
                        SuffixDecodingDrafter(
                            max_tree_depth=args.suffix_max_depth, max_spec_factor=factor,
                            max_spec_offset=offset, min_token_prob=probability,
                            use_tree_spec=spec == "tree"))
    return configurations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results.json or results.json.gz of a bench run")
    parser.add_argument("--datastore", type=Path,
                        help="datastore to draft from (default: the run's own)")
    parser.add_argument("--profile", type=Path,
                        help="latency profile JSON to price each step with (default: no pricing)")
    parser.add_argument("--limit", type=int, help="first N prompts only")
    parser.add_argument("--budgets", default="4,12,48,128,512",
                        help="node budgets of the fixed merged trees (comma-separated)")
    parser.add_argument("--peer", choices=["suffix"], action="append", default=[],
                        help="add a peer drafter's rows (suffix: SuffixDecoding, bench only)")
    parser.add_argument("--peers-only", action="store_true",
                        help="only the peers' rows: no restdecode drafter, no datastore")
    parser.add_argument("--suffix-max-depth", type=int, default=24,
                        help="SuffixDecoding max tree depth (vLLM default 24)")
    parser.add_argument("--suffix-max-spec-factor", default="1.0",
                        help="SuffixDecoding max_spec_factor values (comma-separated; vLLM: 1.0)")
    parser.add_argument("--suffix-max-spec-offset", default="0",
                        help="SuffixDecoding max_spec_offset values (comma-separated; vLLM: 0)")
    parser.add_argument("--suffix-min-prob", default="0.1",
                        help="SuffixDecoding min_token_prob values (comma-separated; vLLM: 0.1)")
    parser.add_argument("--suffix-spec", default="chain",
                        help="chain (as vLLM), tree (Arctic's tree speculation), or chain,tree")
    args = parser.parse_args()
    if args.peers_only and not args.peer:
        parser.error("--peers-only needs a --peer")

    from restdecode.benchmark.replay import replay
    from restdecode.benchmark.runner import encode_prompt
    from restdecode.datastore import Datastore
    from restdecode.drafting import ContextDrafter, RetrievalDrafter, default_drafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET, CONTEXT_SPAN, STEP_OVERHEAD_S
    from restdecode.latency import LatencyProfile
    from restdecode.models import load_tokenizer
    from restdecode.workloads import load_workload

    opener = gzip.open if args.results.suffix == ".gz" else open
    with opener(args.results, "rt", encoding="utf-8") as file:
        run = json.load(file)
    outputs = {row["prompt_id"]: row["token_ids"] for row in run["rows"]
               if row["method"] == "hf-greedy" and row["turn"] == 1}
    tokenizer = load_tokenizer(run["model"]["name"])
    datastore = (None if args.peers_only
                 else Datastore.open(args.datastore or run["datastore"]["path"], tokenizer))
    profile = LatencyProfile.load(args.profile) if args.profile else None
    prompts = [p for p in load_workload(run["workload"]) if p.id in outputs][: args.limit]
    prompt_ids = {p.id: encode_prompt(tokenizer, p.text, p.messages)[0].tolist() for p in prompts}

    configurations = {}
    if not args.peers_only:
        configurations["rest (retrieval, 64 nodes)"] = lambda: RetrievalDrafter(datastore)
        for budget in (int(b) for b in args.budgets.split(",")):
            configurations[f"retrieval + context, {budget} nodes"] = (
                lambda budget=budget: default_drafter(datastore, budget=budget))
        configurations[f"context only, {CANDIDATE_BUDGET} nodes"] = (
            lambda: ContextDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET))
    if "suffix" in args.peer:
        configurations.update(peer_configurations(args))
    if profile is not None and not args.peers_only:
        configurations[f"planned (default, {CANDIDATE_BUDGET} candidates)"] = (
            lambda: default_drafter(datastore, profile=profile))

    tokens = sum(len(outputs[p.id]) for p in prompts)
    print(f"{run['workload']}: {len(prompts)} prompts, hf-greedy outputs of {args.results}")
    print("| drafter | tokens per forward | mean nodes | steps committing >= 2 / 3 / 4 / 6 |"
          " draft ms per step |" + (" predicted ms per token |" if profile else ""))
    print("|---|---|---|---|---|" + ("---|" if profile else ""))
    for name, make in configurations.items():
        drafter = Timed(make())
        steps = [step for p in prompts
                 for step in replay(drafter, prompt_ids[p.id], outputs[p.id])]
        forwards = len(prompts) + len(steps)  # prefill included, as the bench counts
        committed = np.array([s.committed for s in steps])
        reach = " / ".join(f"{np.mean(committed >= k):.0%}" for k in (2, 3, 4, 6))
        line = (f"| {name} | {tokens / forwards:.2f} | {np.mean([s.nodes for s in steps]):.1f} |"
                f" {reach} | {1000 * drafter.seconds / len(steps):.3f} |")
        if profile is not None:
            seconds = sum(float(profile.predict(1 + s.nodes, s.cache_length)) + STEP_OVERHEAD_S
                          for s in steps)
            line += f" {1000 * seconds / (tokens - len(prompts)):.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()

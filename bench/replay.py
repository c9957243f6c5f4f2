"""What the drafts could give: replay a bench run's hf-greedy outputs through drafters.

No model forward runs (restdecode.benchmark.replay): each configuration drafts on the recorded
context, greedy acceptance is read off the recorded output. Tokens per forward are exact for the
drafter as configured (the `rest` row reproduces the measured run's figure); with --profile (a
latency profile JSON from $RESTDECODE_HOME/profiles) each step is priced by the profile, which
shows what a bigger tree would cost.

    .venv/bin/python bench/replay.py bench/results/<run>/results.json.gz \
        [--datastore FILE] [--profile FILE] [--limit N] [--budgets 4,12,48,128,512]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np


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
    args = parser.parse_args()

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
    datastore = Datastore.open(args.datastore or run["datastore"]["path"], tokenizer)
    profile = LatencyProfile.load(args.profile) if args.profile else None
    prompts = [p for p in load_workload(run["workload"]) if p.id in outputs][: args.limit]
    prompt_ids = {p.id: encode_prompt(tokenizer, p.text, p.messages)[0].tolist() for p in prompts}

    configurations = {"rest (retrieval, 64 nodes)": lambda: RetrievalDrafter(datastore)}
    for budget in (int(b) for b in args.budgets.split(",")):
        configurations[f"retrieval + context, {budget} nodes"] = (
            lambda budget=budget: default_drafter(datastore, budget=budget))
    configurations[f"context only, {CANDIDATE_BUDGET} nodes"] = (
        lambda: ContextDrafter(span=CONTEXT_SPAN, budget=CANDIDATE_BUDGET))
    if profile is not None:
        configurations[f"planned (default, {CANDIDATE_BUDGET} candidates)"] = (
            lambda: default_drafter(datastore, profile=profile))

    tokens = sum(len(outputs[p.id]) for p in prompts)
    print(f"{run['workload']}: {len(prompts)} prompts, hf-greedy outputs of {args.results}")
    print("| drafter | tokens per forward | mean nodes | steps committing >= 2 / 3 / 4 / 6 |"
          + (" predicted ms per token |" if profile else ""))
    print("|---|---|---|---|" + ("---|" if profile else ""))
    for name, make in configurations.items():
        drafter = make()
        steps = [step for p in prompts
                 for step in replay(drafter, prompt_ids[p.id], outputs[p.id])]
        forwards = len(prompts) + len(steps)  # prefill included, as the bench counts
        committed = np.array([s.committed for s in steps])
        reach = " / ".join(f"{np.mean(committed >= k):.0%}" for k in (2, 3, 4, 6))
        line = f"| {name} | {tokens / forwards:.2f} | {np.mean([s.nodes for s in steps]):.1f} | {reach} |"
        if profile is not None:
            seconds = sum(float(profile.predict(1 + s.nodes, s.cache_length)) + STEP_OVERHEAD_S
                          for s in steps)
            line += f" {1000 * seconds / (tokens - len(prompts)):.1f} |"
        print(line, flush=True)


if __name__ == "__main__":
    main()

"""Acceptance by depth per source, inside a merged method of a `restdecode bench` run (issue 17).

Not a test. `bench/acceptance_depth.py` cannot split a merged method's accepted paths among its
sources (a merged tree's nodes do not remember where they came from). This does it afterwards,
without the model: it walks the merged method's own recorded steps (``accepted_per_step``) and,
at each, asks the model-free sources, retrieval + context (restdecode's default drafter with its
whole candidate budget, as the merge sees them), for their tree on the same context
(`restdecode.benchmark.replay`). The accepted path's first ``r`` tokens are ones retrieval +
context proposed, where ``r`` is how deep their tree spells the accepted path; the rest (depths
``r + 1`` to the accepted depth) only the trained drafter proposed, since a merged tree holds
only its sources' nodes. A path both proposed counts for retrieval + context.

Reported per depth d: the share of the merged method's steps whose accepted path reached depth
d, and of those the share whose d-th token retrieval + context also proposed.

    .venv/bin/python bench/source_depth.py bench/out/<run>/results.json \
        [--method draft-model+retrieval] [--depths 6] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from acceptance_depth import load_run  # bench/: the script's own folder


def retrieval_reach(drafter, prompt_ids: list[int], output: list[int],
                    committed: list[int]) -> list[tuple[int, int]]:
    """(accepted depth, how deep retrieval + context spell it) for each recorded step after
    prefill; the drafter is fed the steps the merged method took."""
    from restdecode.benchmark.replay import greedy_accepted_path
    from restdecode.drafting import StepFeedback

    drafter.reset()
    drafter.observe(StepFeedback(output[:committed[0]]))
    produced, pairs = committed[0], []
    for count in committed[1:]:
        accepted = output[produced:produced + count - 1]
        draft = drafter.propose(list(prompt_ids) + output[:produced])
        path = greedy_accepted_path(draft, accepted)
        pairs.append((len(accepted), len(path)))
        drafter.observe(StepFeedback(output[produced:produced + count], draft, path))
        produced += count
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="results.json or results.json.gz of a bench run")
    parser.add_argument("--method", default="draft-model+retrieval",
                        help="the merged method to split (default: draft-model+retrieval)")
    parser.add_argument("--datastore", type=Path, help="default: the run's own")
    parser.add_argument("--depths", type=int, default=6)
    parser.add_argument("--limit", type=int, help="first N prompts only")
    args = parser.parse_args(argv)

    from restdecode.benchmark.runner import encode_prompt
    from restdecode.datastore import Datastore
    from restdecode.drafting import default_drafter
    from restdecode.drafting.defaults import CANDIDATE_BUDGET
    from restdecode.models import load_tokenizer
    from restdecode.workloads import load_workload

    run = load_run(args.results)
    rows = [r for r in run["rows"] if r["method"] == args.method and r["turn"] == 1]
    if not rows:
        parser.error(f"no rows of method {args.method!r} in {args.results}")
    tokenizer = load_tokenizer(run["model"]["name"])
    datastore = Datastore.open(args.datastore or run["datastore"]["path"], tokenizer)
    prompts = {p.id: p for p in load_workload(run["workload"])}
    drafter = default_drafter(datastore, budget=CANDIDATE_BUDGET)
    pairs = []
    for row in rows[: args.limit]:
        prompt = prompts[row["prompt_id"]]
        prompt_ids = encode_prompt(tokenizer, prompt.text, prompt.messages)[0].tolist()
        pairs += retrieval_reach(drafter, prompt_ids, row["token_ids"],
                                 [int(n) for n in row["accepted_per_step"]])
    accepted, reach = np.array(pairs).T
    print(f"{args.method}: {len(rows[: args.limit])} prompts, {len(pairs):,} steps after prefill; "
          f"retrieval + context as a {CANDIDATE_BUDGET}-candidate tree")
    print("| depth d | steps reaching d | of those, d-th token also from retrieval + context |"
          " only from the trained drafter |")
    print("|---|---|---|---|")
    for depth in range(1, args.depths + 1):
        reached = accepted >= depth
        if not reached.any():
            break
        shared = float(np.mean(reach[reached] >= depth))
        print(f"| {depth} | {np.mean(reached):.1%} | {shared:.0%} | {1 - shared:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

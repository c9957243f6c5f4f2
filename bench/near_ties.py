"""Where a bench run's method differs from its baseline, how close the model was to a tie.

For every prompt whose ``METHOD`` output differs from the run's baseline (e.g. restdecode on a
Q4_1 GGUF against llama.cpp's own greedy), the first differing position and the top-2 logit gap
there, as plain one-token-at-a-time decoding on the same backend saw it
(``restdecode.cli.check_lossless.top2_logit_gap``). Prints the gaps' distribution and the
largest one: a difference at a large gap would be a logic error, a tiny one a rounding flip.

usage: python bench/near_ties.py RESULTS.json[.gz] [--method restdecode] [--model M]
"""

from __future__ import annotations

import argparse
import gzip
import json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results")
    parser.add_argument("--method", default="restdecode")
    parser.add_argument("--model", default=None, help="default: the run's model")
    args = parser.parse_args()
    opener = gzip.open if args.results.endswith(".gz") else open
    with opener(args.results, "rt") as file:
        document = json.load(file)
    from restdecode.cli.check_lossless import first_difference, top2_logit_gap
    from restdecode.decode import prompt_token_ids
    from restdecode.engine import Engine
    from restdecode.workloads import load_workload

    settings = document["settings"]
    engine = Engine.load(args.model or document["model"]["name"], backend=settings["backend"],
                         draft=False)
    prompts = {p.id: p for p in load_workload(document["workload"])}
    rows = {(r["prompt_id"], r["method"]): r for r in document["rows"]}
    baseline = document["baseline"]
    gaps = []
    for prompt_id, prompt in prompts.items():
        ours, reference = rows.get((prompt_id, args.method)), rows.get((prompt_id, baseline))
        if ours is None or reference is None:
            continue
        first = first_difference(ours["token_ids"], reference["token_ids"])
        if first is None or first >= min(len(ours["token_ids"]), len(reference["token_ids"])):
            continue
        ids = prompt_token_ids(engine.tokenizer, prompt.text, prompt.messages)
        gap = top2_logit_gap(engine.backend, ids, reference["token_ids"][:first])
        gaps.append(gap)
        print(f"{prompt_id}: first difference at token {first}, top-2 gap {gap:.4f}")
    compared = sum(1 for (pid, method) in rows if method == args.method)
    print(f"\n{args.method} vs {baseline}: {compared - len(gaps)}/{compared} identical (up to a "
          f"trailing length difference); {len(gaps)} differ")
    if gaps:
        gaps.sort()
        print(f"top-2 gap at the first difference: median {gaps[len(gaps) // 2]:.4f}, "
              f"largest {gaps[-1]:.4f}")


if __name__ == "__main__":
    main()

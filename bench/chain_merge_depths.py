"""Issue 17: the draft chain merged with retrieval + context at 1, 2 or 3 depths, side by side.

`source_depth.py` found that, merged, the chain's own tokens are almost all first tokens: past
depth 1 retrieval + context had already proposed 96-99% of what was accepted. Its later depths
cost most of its drafting time (a beam of up to 4 rows per depth against one row at depth 1).
This runs ``restdecode bench`` with extra methods ``merged-d1``, ``merged-d2`` and ``merged-d3``:
``draft-model+retrieval`` whose chain drafts that many depths, interleaved with the other
methods in one process run. (When this was written the merged chain drafted 3 depths; after
its measurement it drafts 1, ``drafting.defaults.MERGED_CHAIN_DEPTHS``.)

    .venv/bin/python bench/chain_merge_depths.py mtbench --limit 30 --max-new-tokens 256 --compile \\
        --methods restdecode,merged-d1,merged-d3 --draft-model bench/out/smollm2-chain-try \\
        --datastore ~/.cache/restdecode/datastores/sharegpt-smollm2.rds --out bench/out/chain-depths

Everything after the script's name is ``restdecode bench``'s arguments; or, to compare a run's
methods with ``restdecode`` prompt by prompt (ms per decoding step, summed and median speed
ratios, identical tokens):

    .venv/bin/python bench/chain_merge_depths.py --compare bench/out/chain-depths/results.json[.gz] [PROMPT_ID ...]

(prompt ids after the file are left out, e.g. one whose first method paid a one-off stall).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import restdecode.benchmark.methods as methods
from acceptance_depth import load_rows  # bench/: the script's own folder
from restdecode.cli import main
from restdecode.drafting.chain import ChainDrafter

VARIANTS = {f"merged-d{depths}": depths for depths in (1, 2, 3)}


def chain_of(drafter) -> ChainDrafter:
    """The draft chain inside a planned, merged drafter."""
    pending = [drafter]
    while pending:
        current = pending.pop()
        if isinstance(current, ChainDrafter):
            return current
        pending += [inner for inner in [getattr(current, "drafter", None),
                                        *getattr(current, "drafters", [])] if inner is not None]
    raise LookupError(f"no draft chain in {type(drafter).__name__}")


def add_variants() -> None:
    """Make ``merged-dN`` a bench method: the merged drafter with its chain cut to N depths."""
    build = methods._build_method

    def build_with_variants(name, engine, memory_file, hf_model):
        if name not in VARIANTS:
            return build(name, engine, memory_file, hf_model)
        from restdecode.drafting.planner import default_calibration

        drafter = engine.new_drafter(calibration=default_calibration())
        chain = chain_of(drafter)
        chain.depths = min(VARIANTS[name], chain.chain.depths)
        return methods.EngineMethod(name, engine, drafter)

    methods._build_method = build_with_variants
    methods.METHOD_NAMES = methods.METHOD_NAMES + tuple(VARIANTS)
    methods.ENGINE_METHODS = methods.ENGINE_METHODS | frozenset(VARIANTS)


def compare(results_path: str, skip: Sequence[str] = (), reference: str = "restdecode") -> None:
    """Print each method of a bench run against ``reference``, prompt by prompt, leaving out the
    prompts ``skip``."""
    rows = load_rows(Path(results_path))
    by_prompt: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["prompt_id"] not in skip:
            by_prompt[row["prompt_id"]][row["method"]] = row
    print(f"| method | ms per decoding step | decoding steps | summed speed vs {reference} "
          f"| median per prompt | identical to {reference} |")
    print("|---|---|---|---|---|---|")
    for method in dict.fromkeys(row["method"] for row in rows):
        pairs = [(p[reference], p[method]) for p in by_prompt.values()]
        seconds = sum(mine["decode_s"] for _, mine in pairs)
        steps = max(1, sum(mine["steps"] - 1 for _, mine in pairs))  # the prefill: not decoding
        summed = sum(ref["decode_s"] for ref, _ in pairs) / seconds
        median = statistics.median(ref["decode_s"] / mine["decode_s"] for ref, mine in pairs)
        same = sum(ref["token_ids"] == mine["token_ids"] for ref, mine in pairs)
        print(f"| {method} | {1000 * seconds / steps:.1f} | {steps:,} | {summed:.3f}x "
              f"| {median:.3f}x | {same}/{len(pairs)} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        compare(sys.argv[2], skip=sys.argv[3:])
        sys.exit(0)
    add_variants()
    sys.exit(main(["bench", *sys.argv[1:]]))

"""Issue 17: the draft chain merged with retrieval + context at 1, 2 or 3 depths, side by side.

`source_depth.py` found that, merged, the chain's own tokens are almost all first tokens: past
depth 1 retrieval + context had already proposed 96-99% of what was accepted. Its later depths
cost most of its drafting time (a beam of up to 4 rows per depth against one row at depth 1).
This runs ``restdecode bench`` with extra methods ``merged-d1``, ``merged-d2`` and ``merged-d3``:
``draft-model+retrieval`` whose chain drafts that many depths, interleaved with the other
methods in one process run. (When this was written the merged chain drafted 3 depths; after
its measurement it drafts 1, ``drafting.defaults.MERGED_CHAIN_DEPTHS``.)

    .venv/bin/python bench/chain_merge_depths.py mtbench --limit 20 --max-new-tokens 256 --compile \\
        --methods hf-greedy,restdecode,merged-d1,merged-d3 --draft-model bench/out/smollm2-chain-try \\
        --datastore ~/.cache/restdecode/datastores/sharegpt-smollm2.rds --out bench/out/chain-depths

Everything after the script's name is ``restdecode bench``'s arguments.
"""

from __future__ import annotations

import sys

import restdecode.benchmark.methods as methods
from restdecode.cli import main
from restdecode.drafting.chain import ChainDrafter

VARIANTS = {f"merged-d{depths}": depths for depths in (1, 2, 3)}


def chain_of(drafter) -> ChainDrafter:
    """The draft chain inside a planned, merged drafter."""
    if isinstance(drafter, ChainDrafter):
        return drafter
    for inner in [getattr(drafter, "drafter", None), *getattr(drafter, "drafters", [])]:
        if inner is not None:
            try:
                return chain_of(inner)
            except LookupError:
                pass
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


if __name__ == "__main__":
    add_variants()
    sys.exit(main(["bench", *sys.argv[1:]]))

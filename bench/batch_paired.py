"""Batched decoding, two loops interleaved step by step (issue 15): the batch planner against
our plain batched loop, with the machine's drift shared between them.

Not a test; run it alone on the machine. ``bench/batch_bench.py`` runs each method's whole
batch in turn, so a method's 20-second run lands in its own slow or fast spell: on this shared
2-core CPU identical plain 16-row runs differ by 10-25%, more than the effect to measure. Here
two :class:`~restdecode.batch.BatchDecoder` objects decode the same prompts at once, each
keeping ``B`` rows (continuous batching), and take turns: one step of one, one step of the
other (which goes first alternates). Each loop is charged only its own steps and prefills, so a
slow spell lands on both loops' neighbouring steps. Reported per round: each loop's output
tokens over its own seconds, and their ratio; over the rounds, the median ratio and a bootstrap
95% interval of the mean. The planner's calibration and gates are kept across rounds, as a
server keeps them. An untimed short round comes first: first calls cost once per process
(numba functions loaded, buffers allocated), and with the gate held closed at 9-16 rows the
planner's first timed round still ran at 0.97x of plain against 1.00x after. Our loops step
as :func:`~restdecode.generate_batch` does: draining once no prompt is left to join.

    .venv/bin/python bench/batch_paired.py --batch-size 16 --limit 16 --rounds 6

Every planner output must equal the plain loop's (greedy); the script stops if one does not.

``--against single`` (with ``--batch-size 1``) pairs the planner's 1-row loop with today's
single-sequence default (:func:`restdecode.generate` with the engine's planned drafter) instead:
a single loop cannot be stepped from outside, so the two take turns request by request (which
goes first alternates), each keeping its own calibration across rounds.

    .venv/bin/python bench/batch_paired.py --against single --batch-size 1 --limit 8 --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from batch_bench import add_workload_arguments, prompt_ids  # bench/, this script's folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser, limit=16)
    parser.add_argument("--batch-size", type=int, default=16, help="rows decoding at once")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--against", choices=("plain", "single"), default="plain",
                        help="the other loop: our plain batched loop (default), or the "
                             "single-sequence default request by request (--batch-size 1)")
    parser.add_argument("--out", default="bench/out/batch-paired")
    args = parser.parse_args(argv)
    if args.against == "single" and args.batch_size != 1:
        parser.error("--against single compares one row at a time: use --batch-size 1")

    import torch

    from restdecode import Engine
    from restdecode.drafting.planner import BatchGates, default_calibration

    engine = Engine.load(args.model, datastore=Path(args.datastore).expanduser(),
                         backend="transformers")
    engine.profile  # measured (or read from the cache) before any timing
    profile = engine.batch_profile
    ids = prompt_ids(engine, args)
    calibration, gates = default_calibration(), BatchGates()
    single_calibration = default_calibration()  # --against single: the single loop's own
    rounds = []
    other = args.against

    def one_round(prompts, options, calibrations, planner_first):
        if other == "single":
            return single_round(engine, prompts, options, profile, *calibrations,
                                planner_first=planner_first)
        return paired_round(engine, prompts, options, profile, *calibrations[:2],
                            planner_first=planner_first)

    with torch.inference_mode():
        # Untimed: first calls' one-time costs would land on the first round's planner. Its
        # own calibration and gates, so that the timed rounds start from nothing learnt.
        warm = argparse.Namespace(**vars(args) | {"max_new_tokens": 16})
        one_round(ids[:args.batch_size], warm,
                  (default_calibration(), BatchGates(), default_calibration()), False)
        for index in range(args.rounds):
            run = one_round(ids, args, (calibration, gates, single_calibration), index % 2 == 1)
            rounds.append(run)
            print(f"round {index}: {other} {run[other]['tok_s']:.1f} tok/s, planner "
                  f"{run['planner']['tok_s']:.1f} tok/s ({run['planner']['tokens_per_step']:.2f} "
                  f"tokens/step), ratio {run['ratio']:.3f}", file=sys.stderr, flush=True)
    ratios = np.array([r["ratio"] for r in rounds])
    low, high = bootstrap_interval(ratios)
    report = {"command": " ".join(sys.argv), "model": args.model, "prompts": len(ids),
              "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "against": other,
              "cpus": os.cpu_count(), "platform": platform.platform(),
              "ratios": ratios.tolist(), "median_ratio": float(np.median(ratios)),
              "mean_ratio": float(ratios.mean()), "mean_ratio_95": [low, high],
              "rounds": rounds}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    summary = (f"B={args.batch_size}, {len(ids)} prompts, {args.max_new_tokens} tokens, "
               f"{len(rounds)} rounds: planner/{other} median {np.median(ratios):.3f}, mean "
               f"{ratios.mean():.3f} (95% bootstrap {low:.3f}-{high:.3f}); by round "
               + ", ".join(f"{r:.3f}" for r in ratios))
    (out / "report.md").write_text(f"`{report['command']}`\n\n{summary}\n")
    print(summary)
    return 0


class _Loop:
    """One batched loop over the prompts: keeps ``rows`` decoding, charged its own seconds."""

    def __init__(self, engine, ids, rows: int, options, drafter_of, profile=None,
                 gates=None) -> None:
        from restdecode.batch import BatchDecoder, BatchRequest

        self.decoder = BatchDecoder(engine.model, engine.tokenizer, options=options,
                                    profile=profile, gates=gates)
        self.waiting = [self.decoder.prepare(BatchRequest(input_ids=i, drafter=drafter_of()))
                        for i in ids]
        self.rows = rows
        self.handles: list[int] = []
        self.seconds = 0.0
        self.steps = 0
        self.row_steps = 0

    @property
    def done(self) -> bool:
        return not self.waiting and not self.decoder.active

    def advance(self) -> None:
        """Admit waiting prompts up to the row limit, then one step; time both."""
        started = time.perf_counter()
        room = self.rows - len(self.decoder.active)
        if self.waiting and room > 0:  # joining together, as generate_batch admits them
            joining, self.waiting = self.waiting[:room], self.waiting[room:]
            self.handles += self.decoder.add_many(joining)
        if self.decoder.active:
            self.row_steps += len(self.decoder.active)
            self.steps += 1
            self.decoder.step(draining=not self.waiting)  # as generate_batch steps
        self.seconds += time.perf_counter() - started

    def outputs(self) -> list[list[int]]:
        return [self.decoder.result(h).token_ids for h in self.handles]


def paired_round(engine, ids, args, profile, calibration, gates, *, planner_first: bool) -> dict:
    """Both loops over ``ids``, alternating steps; each one's tokens over its own seconds."""
    from restdecode.options import GenerationOptions

    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    plain = _Loop(engine, ids, args.batch_size, options, lambda: None)
    planner = _Loop(engine, ids, args.batch_size, options,
                    lambda: engine.new_drafter(calibration=calibration), profile=profile,
                    gates=gates)
    order = [planner, plain] if planner_first else [plain, planner]
    while not (plain.done and planner.done):
        for loop in order:
            if not loop.done:
                loop.advance()
        order.reverse()  # neither loop always runs right after the other
    return compared("plain", {
        name: {"outputs": loop.outputs(), "seconds": loop.seconds, "steps": loop.steps,
               "row_steps": loop.row_steps}
        for name, loop in (("plain", plain), ("planner", planner))})


def single_round(engine, ids, args, profile, calibration, gates, single_calibration, *,
                 planner_first: bool) -> dict:
    """The planner's 1-row loop and the single-sequence default over ``ids``, request by
    request in turns; each one's tokens over its own seconds."""
    from restdecode.batch import BatchRequest, generate_batch

    loops = {name: {"outputs": [], "seconds": 0.0, "steps": 0} for name in ("single", "planner")}

    def decode(name, prompt):
        started = time.perf_counter()
        if name == "planner":
            request = BatchRequest(input_ids=prompt,
                                   drafter=engine.new_drafter(calibration=calibration))
            result = generate_batch(engine.model, engine.tokenizer, [request], max_rows=1,
                                    max_new_tokens=args.max_new_tokens, profile=profile,
                                    gates=gates)[0]
        else:
            result = engine.generate(input_ids=prompt,
                                     drafter=engine.new_drafter(calibration=single_calibration),
                                     max_new_tokens=args.max_new_tokens)
        loops[name]["seconds"] += time.perf_counter() - started
        loops[name]["outputs"].append(result.token_ids)
        loops[name]["steps"] += result.stats.steps

    order = ["planner", "single"] if planner_first else ["single", "planner"]
    for prompt in ids:
        for name in order:
            decode(name, prompt)
        order.reverse()
    for loop in loops.values():
        loop["row_steps"] = loop["steps"]  # one row a step
    return compared("single", loops)


def compared(other: str, loops: dict[str, dict]) -> dict:
    """One round's figures for ``other`` and ``planner`` (each: ``outputs``, ``seconds``,
    ``steps``, ``row_steps``) and the planner's speed over the other's; stops the script if any
    planner output differs from the other loop's."""
    if loops["planner"]["outputs"] != loops[other]["outputs"]:
        differing = sum(a != b for a, b in zip(loops["planner"]["outputs"],
                                               loops[other]["outputs"]))
        raise SystemExit(f"{differing} planner outputs differ from the {other} loop's")
    result = {}
    for name in (other, "planner"):
        loop, tokens = loops[name], loops[name]["outputs"]
        new = sum(len(t) for t in tokens)
        result[name] = {"seconds": loop["seconds"], "new_tokens": new,
                        "tok_s": new / loop["seconds"], "steps": loop["steps"],
                        "tokens_per_step": (new - len(tokens)) / max(loop["row_steps"], 1)}
    result["ratio"] = result["planner"]["tok_s"] / result[other]["tok_s"]
    return result


def bootstrap_interval(values: np.ndarray, draws: int = 10_000, seed: int = 0
                       ) -> tuple[float, float]:
    """A 95% bootstrap interval of the mean of ``values``."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(draws, values.size), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


if __name__ == "__main__":
    sys.exit(main())

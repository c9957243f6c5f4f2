"""Batched decoding benchmark (issue 15): four ways to decode a batch of requests, side by side.

Not a test; run it alone on the machine. For each batch size B, the same prompts are decoded by:

  hf-generate-batched   transformers' generate, B prompts at a time, left-padded, plain greedy
  plain-batched         our batched loop (restdecode.generate_batch), no drafts, B rows at a time
  spec-fixed            our batched loop, every row a fixed --budget-node tree (datastore+context)
  spec-planned          our batched loop, the batch planner sharing each forward's width among
                        the rows by expected accepted tokens per predicted second
  single-default        batch 1 only: today's single-sequence loop (restdecode.generate with
                        the engine's default planned drafter), one request after another

With ``--repeats N`` every batch size runs N rounds, each round every method once, in an order
rotated from round to round; a method's figures are its median round (its spread is kept). The
planner's acceptance calibration and the batch loop's drafting gates are kept across rounds and
batch sizes per method, as a server keeps them across requests.

Our loops keep B rows decoding (continuous batching: a finished row's place goes to the next
prompt); transformers' generate runs static batches of B. Reported per method and batch size:
total output tokens/s (all new tokens over the wall time), per-request decode tokens/s (mean),
tokens per step, and how many outputs equal our plain batched loop's (greedy: all of ours must).

    .venv/bin/python bench/batch_bench.py --limit 8 --batch-sizes 1,2,4,8 --max-new-tokens 128

With ``--backend llamacpp`` the model is the GGUF on llama.cpp (one context whose cells all rows
share, sized for --limit rows) and hf-generate-batched is skipped (no transformers model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

METHODS = ("hf-generate-batched", "plain-batched", "spec-fixed", "spec-planned", "single-default")
SINGLE_ONLY = ("single-default",)  # run at batch size 1 only


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(parser, limit=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--budget", type=int, default=6, help="nodes of spec-fixed's trees")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--backend", choices=("transformers", "llamacpp"), default="transformers")
    parser.add_argument("--device", default="cpu", help="transformers: cpu or cuda")
    parser.add_argument("--context", type=int, default=1024,
                        help="llama.cpp: cells per row (the context holds B times this)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds per batch size (methods interleaved; medians reported)")
    parser.add_argument("--out", default="bench/out/batch")
    args = parser.parse_args(argv)

    from restdecode.drafting.planner import BatchGates, default_calibration

    engine = load_engine(args)
    engine.profile  # measured (or read from the cache) before any timing
    engine.batch_profile
    ids = prompt_ids(engine, args)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = args.methods.split(",")
    if args.backend == "llamacpp":
        methods = [m for m in methods if m != "hf-generate-batched"]
    runs = []
    calibrations = {method: default_calibration() for method in methods}
    gates = {method: BatchGates() for method in methods}
    for size in sizes:
        here = [m for m in methods if size == 1 or m not in SINGLE_ONLY]
        rounds: dict[str, list[dict]] = {method: [] for method in here}
        for round_index in range(args.repeats):
            shift = round_index % len(here)
            for method in here[shift:] + here[:shift]:
                run = measure(method, engine, ids, size, args, calibrations[method],
                              gates[method])
                rounds[method].append(run)
                print(f"B={size:>2} {method:<20} {run['output_tok_s']:7.1f} tok/s total, "
                      f"{run['per_request_decode_tok_s']:6.1f} per request, "
                      f"{run['tokens_per_step']:.2f} tokens/step", file=sys.stderr, flush=True)
        reference = median_round(rounds["plain-batched"])["token_ids"] if "plain-batched" in rounds else None
        for method in here:
            run = dict(median_round(rounds[method]))
            run["rounds_tok_s"] = [r["output_tok_s"] for r in rounds[method]]
            run["vs_best_other_by_round"] = versus_best_other(rounds, method)
            if reference is not None:
                run["identical_to_plain_batched"] = min(
                    sum(a == b for a, b in zip(r["token_ids"], reference)) for r in rounds[method])
            run.pop("token_ids")
            runs.append(run)
    report = {"command": " ".join(sys.argv), "model": args.model, "prompts": len(ids),
              "max_new_tokens": args.max_new_tokens, "backend": args.backend, "device": args.device,
              "cpus": os.cpu_count(),
              "platform": platform.platform(), "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    table = markdown(runs)
    (out / "report.md").write_text(f"`{report['command']}`\n\n{table}\n")
    print(table)
    return 0


def add_workload_arguments(parser: argparse.ArgumentParser, *, limit: int) -> None:
    """The model, datastore and prompts options this script shares with batch_paired.py."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--datastore", default="~/.cache/restdecode/datastores/sharegpt-smollm2.rds")
    parser.add_argument("--prompts", default="mtbench", help="mtbench, humaneval or prompts:PATH")
    parser.add_argument("--limit", type=int, default=limit, help="prompts")


def prompt_ids(engine, args) -> list[list[int]]:
    """The first ``--limit`` prompts of ``--prompts``, tokenized as the engine decodes them."""
    from restdecode.decode import prompt_token_ids
    from restdecode.workloads import load_workload

    prompts = load_workload(args.prompts, limit=args.limit)
    return [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in prompts]


def load_engine(args):
    """The model on the chosen backend (llama.cpp: a context of ``--context`` cells for each of
    the largest batch's rows), the datastore, a planned default drafter."""
    from restdecode import Engine
    from restdecode.backends.llamacpp import LlamaCppBackend
    from restdecode.engine import open_datastore
    from restdecode.models import gguf_path, load_tokenizer

    datastore = Path(args.datastore).expanduser()
    if args.backend == "transformers":
        engine = Engine.load(args.model, datastore=datastore, backend="transformers")
        engine.model.to(args.device)
        return engine
    rows = max(int(b) for b in args.batch_sizes.split(","))
    backend = LlamaCppBackend(gguf_path(args.model), n_ctx=rows * args.context)
    tokenizer = load_tokenizer(args.model)
    return Engine(backend, tokenizer, datastore=open_datastore(datastore, tokenizer),
                  name=args.model)


def lower_median(values: list, key=None):
    """The median of ``values`` (the lower middle one of an even count), by ``key``."""
    ordered = sorted(values, key=key)
    return ordered[(len(ordered) - 1) // 2]


def median_round(rounds: list[dict]) -> dict:
    """The round with the median total throughput."""
    return lower_median(rounds, key=lambda r: r["output_tok_s"])


def measure(method: str, engine, ids: list[list[int]], size: int, args, calibration,
            gates) -> dict:
    """Decode every prompt with ``method``, ``size`` at a time; throughput and outputs."""
    started = time.perf_counter()
    if method == "hf-generate-batched":
        token_ids, per_request = hf_batched(engine, ids, size, args.max_new_tokens)
        steps = sum(len(t) - 1 for t in token_ids)  # plain: one token per row and step
    else:
        results = (decode_each(engine, ids, args, calibration) if method in SINGLE_ONLY
                   else decode_batched(method, engine, ids, size, args, calibration, gates))
        token_ids = [r.token_ids for r in results]
        steps = sum(r.stats.steps for r in results)
        per_request = [r.stats.decode_tokens_per_s for r in results]
    elapsed = time.perf_counter() - started
    new_tokens = sum(len(t) for t in token_ids)
    decoded = new_tokens - len(token_ids)  # the prefill's first tokens are not steps'
    return {"method": method, "batch_size": size, "seconds": elapsed,
            "new_tokens": new_tokens, "output_tok_s": new_tokens / elapsed,
            "per_request_decode_tok_s": sum(per_request) / len(per_request),
            "tokens_per_step": decoded / steps if steps else 1.0, "token_ids": token_ids}


def decode_each(engine, ids: list[list[int]], args, calibration) -> list:
    """single-default: the single-sequence loop, one request after another."""
    return [engine.generate(input_ids=i, drafter=engine.new_drafter(calibration=calibration),
                            max_new_tokens=args.max_new_tokens) for i in ids]


def decode_batched(method: str, engine, ids: list[list[int]], size: int, args, calibration,
                   gates) -> list:
    """Our batched loop, ``size`` rows at a time, each row drafting as ``method`` says."""
    import torch

    from restdecode.batch import BatchRequest, generate_batch

    def drafter():
        if method == "spec-fixed":
            return engine.new_drafter(budget=args.budget)
        if method == "spec-planned":
            return engine.new_drafter(calibration=calibration)
        return None
    requests = [BatchRequest(input_ids=i, drafter=drafter()) for i in ids]
    with torch.inference_mode():
        return generate_batch(engine.model, engine.tokenizer, requests, max_rows=size,
                              max_new_tokens=args.max_new_tokens,
                              profile=engine.batch_profile, gates=gates)


def hf_batched(engine, ids: list[list[int]], size: int, max_new_tokens: int):
    """transformers' generate, static batches of ``size``, left-padded, greedy; per-request
    decode rate = the batch's new tokens of that request / the batch's time."""
    import torch

    model, tokenizer = engine.model, engine.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outputs, per_request = [], []
    for start in range(0, len(ids), size):
        group = ids[start:start + size]
        width = max(map(len, group))
        input_ids = torch.tensor([[pad] * (width - len(g)) + g for g in group], device=model.device)
        mask = torch.tensor([[0] * (width - len(g)) + [1] * len(g) for g in group],
                            device=model.device)
        begun = time.perf_counter()
        with torch.inference_mode():
            generated = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad)
        seconds = time.perf_counter() - begun
        eos = engine.backend.eos_token_ids(tokenizer)
        for row in generated[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            outputs.append(row[:cut])
            per_request.append(len(row[:cut]) / seconds)
    return outputs, per_request


def versus_best_other(rounds: dict[str, list[dict]], method: str) -> list[float]:
    """Per round, ``method``'s total throughput over the fastest other method's in the same
    round: paired within a round, these ratios are free of the machine's drift between rounds
    (up to 25% here), which the medians of single methods are not."""
    ratios = []
    for index, run in enumerate(rounds[method]):
        others = [runs[index]["output_tok_s"] for name, runs in rounds.items()
                  if name != method and index < len(runs)]
        if others:
            ratios.append(run["output_tok_s"] / max(others))
    return ratios


def markdown(runs: list[dict]) -> str:
    lines = ["| batch | method | output tok/s (median) | rounds | vs best other, same round "
             "(median; rounds) | per-request tok/s | tokens/step | identical to plain-batched |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        identical = run.get("identical_to_plain_batched", "")
        spread = ", ".join(f"{t:.1f}" for t in run["rounds_tok_s"])
        paired = run["vs_best_other_by_round"]
        versus = (f"{lower_median(paired):.2f}x ("
                  + ", ".join(f"{r:.2f}" for r in paired) + ")") if paired else ""
        lines.append(f"| {run['batch_size']} | {run['method']} | {run['output_tok_s']:.1f} | "
                     f"{spread} | {versus} | {run['per_request_decode_tok_s']:.1f} | "
                     f"{run['tokens_per_step']:.2f} | {identical} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

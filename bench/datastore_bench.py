"""Datastore benchmark: build time and where it goes, size, open time, search latency.

Not a test. Run one at a time on a quiet machine; results go to bench/RESULTS.md by hand.

    python bench/datastore_bench.py generations            # once: SmolLM2 greedy MT-Bench outputs
    python bench/datastore_bench.py run --source sharegpt --out /tmp/sharegpt.rds
    python bench/datastore_bench.py run --source sharegpt --assistant-only --out /tmp/sharegpt-a.rds
    python bench/datastore_bench.py run --source code:stdlib --out /tmp/stdlib.rds

Search contexts: prompt + generation prefixes of real SmolLM2-135M-Instruct greedy outputs for
MT-Bench first turns (chat template applied), cached in bench/mtbench_generations.json, i.e. the
contexts a decoder would search at each step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from restdecode.engine import DEFAULT_MODEL as MODEL

GENERATIONS = Path(__file__).with_name("mtbench_generations.json")


def make_generations(num_questions: int, max_new_tokens: int) -> None:
    """Greedy SmolLM2 outputs for the first turns of the first MT-Bench questions (cached JSON)."""
    import torch

    from restdecode.models import load
    from restdecode.workloads import load_workload

    model, tokenizer = load(MODEL)
    records = []
    for prompt in load_workload("mtbench", limit=num_questions):
        messages = prompt.messages or [{"role": "user", "content": prompt.text}]
        input_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                  return_dict=True)["input_ids"]
        started = time.perf_counter()
        with torch.no_grad():
            output = model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False)
        generated = output[0, input_ids.shape[1]:].tolist()
        print(f"{prompt.id}: {len(generated)} tokens in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        records.append({"id": prompt.id, "prompt_ids": input_ids[0].tolist(), "generated_ids": generated,
                        "text": tokenizer.decode(generated)})
    GENERATIONS.write_text(json.dumps({"model": MODEL, "max_new_tokens": max_new_tokens,
                                       "records": records}) + "\n")
    print(f"wrote {GENERATIONS}", file=sys.stderr)


def search_contexts(limit: int) -> list[np.ndarray]:
    """prompt + generated[:t] for every step t of every cached generation, up to ``limit``."""
    records = json.loads(GENERATIONS.read_text())["records"]
    contexts = []
    for record in records:
        ids = np.array(record["prompt_ids"] + record["generated_ids"], dtype=np.int64)
        for step in range(len(record["generated_ids"])):
            contexts.append(ids[: len(record["prompt_ids"]) + step + 1])
    return contexts[:limit]


def run(args: argparse.Namespace) -> None:
    from restdecode.datastore import Datastore, build_datastore
    from restdecode.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL, quiet=True)
    out = Path(args.out)
    read_seconds = None
    if not args.skip_build:
        from restdecode.datastore import open_source

        started = time.perf_counter()
        characters = sum(len(text) for text in open_source(args.source, assistant_only=args.assistant_only).documents())
        read_seconds = time.perf_counter() - started
        print(f"reading alone: {read_seconds:.1f} s, {characters:,} characters", file=sys.stderr)
        started = time.perf_counter()
        build_datastore(tokenizer, args.source, out, assistant_only=args.assistant_only, workers=args.workers)
        print(f"build end to end: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    open_times = []
    for _ in range(20):
        started = time.perf_counter()
        store = Datastore.open(out)
        open_times.append(time.perf_counter() - started)
        store.close()
    store = Datastore.open(out, tokenizer)
    header = store.header
    contexts = search_contexts(args.contexts)
    store.search(contexts[0])  # numba: load the compiled kernel (or compile it once)
    latencies, match_lengths, rows, found = [], [], [], 0
    for context in contexts:
        started = time.perf_counter_ns()
        result = store.search(context)
        latencies.append((time.perf_counter_ns() - started) / 1e6)
        found += result.match_length > 0
        match_lengths.append(result.match_length)
        rows.append(len(result))
    report = {
        "source": header.source,
        "tokens": header.num_tokens,
        "documents": header.num_documents,
        "token_width": header.token_width,
        "file_mib": round(store.file_size / 2**20, 1),
        "bytes_per_token": round(store.bytes_per_token, 3),
        "build_seconds": header.build_seconds,
        "build_timings": header.timings,
        "read_only_seconds": read_seconds and round(read_seconds, 2),
        "tokens_per_second_tokenizing": round(header.num_tokens / header.timings.get("read_and_tokenize", 1)),
        "source_stats": {k: v for k, v in header.source_stats.items() if k != "roots"},
        "open_ms_median": round(1000 * statistics.median(open_times), 3),
        "open_ms_max": round(1000 * max(open_times), 3),
        "search_contexts": len(contexts),
        "search_ms_p50": round(float(np.percentile(latencies, 50)), 4),
        "search_ms_p99": round(float(np.percentile(latencies, 99)), 4),
        "search_ms_max": round(max(latencies), 3),
        "contexts_with_match": round(found / len(contexts), 3),
        "mean_match_length": round(float(np.mean(match_lengths)), 2),
        "mean_continuations": round(float(np.mean(rows)), 1),
    }
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    generations = commands.add_parser("generations", help="cache SmolLM2 greedy MT-Bench outputs")
    generations.add_argument("--questions", type=int, default=8)
    generations.add_argument("--max-new-tokens", type=int, default=128)
    bench = commands.add_parser("run", help="build (unless --skip-build), open and search a store")
    bench.add_argument("--source", default="sharegpt")
    bench.add_argument("--out", required=True)
    bench.add_argument("--assistant-only", action="store_true")
    bench.add_argument("--workers", type=int, default=2)
    bench.add_argument("--skip-build", action="store_true")
    bench.add_argument("--contexts", type=int, default=1000)
    args = parser.parse_args()
    if args.command == "generations":
        make_generations(args.questions, args.max_new_tokens)
    else:
        run(args)


if __name__ == "__main__":
    main()

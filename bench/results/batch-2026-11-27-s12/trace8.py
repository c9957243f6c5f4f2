"""Where an 8-row whole run spends its time, plain rows against planned ones: every add_many
(prefill) and step of generate_batch, timed, with its row count, tokens and whether it drafted.

    .venv/bin/python bench/results/batch-2026-11-27-s12/trace8.py ROWS LIMIT ROUNDS
"""
import collections
import sys
import time

import torch

from restdecode import Engine
from restdecode.batch import BatchDecoder, BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration
from restdecode.workloads import load_workload

rows, limit, rounds = (int(a) for a in sys.argv[1:4])
engine = Engine.load("smollm2-135m-instruct",
                     datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds",
                     backend="transformers")
engine.profile, engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages)
       for p in load_workload("mtbench", limit=limit)]
events = []
add_many, step = BatchDecoder.add_many, BatchDecoder.step


def traced_add_many(self, requests):
    started = time.perf_counter()
    handles = add_many(self, requests)
    events.append(("add", len(requests), None, 0, time.perf_counter() - started))
    return handles


def traced_step(self, *, draining=False):
    live = len(self.active)
    started = time.perf_counter()
    updates = step(self, draining=draining)
    events.append(("step", live, self._drafted, sum(len(u.tokens) for u in updates.values()),
                   time.perf_counter() - started))
    return updates


BatchDecoder.add_many, BatchDecoder.step = traced_add_many, traced_step
calibration, gates = default_calibration(), BatchGates()


def run(method):
    events.clear()
    requests = [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=calibration)
                             if method == "planned" else None) for i in ids]
    started = time.perf_counter()
    with torch.inference_mode():
        results = generate_batch(engine.model, engine.tokenizer, requests, max_rows=rows,
                                 max_new_tokens=128, profile=engine.batch_profile, gates=gates)
    total = time.perf_counter() - started
    tokens = sum(len(r.token_ids) for r in results)
    adds = [e for e in events if e[0] == "add"]
    steps = [e for e in events if e[0] == "step"]
    by_rows = collections.defaultdict(lambda: [0, 0.0, 0, 0])
    for _, live, drafted, committed, seconds in steps:
        entry = by_rows[live]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += committed
        entry[3] += bool(drafted)
    print(f"{method:8s} {tokens / total:6.1f} tok/s, {total:5.1f} s: prefills "
          f"{sum(e[4] for e in adds):4.2f} s in {len(adds)} calls "
          f"({[e[1] for e in adds]}), steps {sum(e[4] for e in steps):5.2f} s in {len(steps)}",
          flush=True)
    for live in sorted(by_rows, reverse=True):
        count, seconds, committed, drafted = by_rows[live]
        print(f"    {live:2d} rows: {count:4d} steps ({drafted:3d} drafted), "
              f"{1000 * seconds / count:6.1f} ms/step, {committed / count:5.2f} tokens/step, "
              f"{seconds:5.2f} s", flush=True)
    return [r.token_ids for r in results]


run("plain"), run("planned")  # warm-up: first calls, the gates' first verdicts
for round_index in range(rounds):
    for method in (("plain", "planned") if round_index % 2 == 0 else ("planned", "plain")):
        run(method)

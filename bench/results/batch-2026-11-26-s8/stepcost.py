"""Every step of the planner at one batch size: rows, nodes, forward and whole-step ms, tokens.
Usage: stepcost.py BATCH PROMPTS ROUNDS. Alternates a plain round and a planned round."""
import sys, time, collections
import numpy as np
import torch
from restdecode import Engine
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration
from restdecode.workloads import load_workload
B, N, rounds = (int(a) for a in sys.argv[1:4])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
log = []
orig_step, orig_verify, orig_judge = BatchDecoder.step, BatchDecoder._verify, BatchDecoder._judge_drafting
def judge(self, rows, committed, seconds):
    self._committed = committed; return orig_judge(self, rows, committed, seconds)
BatchDecoder._judge_drafting = judge
def verify(self, drafted):
    t = time.perf_counter(); out = orig_verify(self, drafted)
    self._diag = (sum(tree.num_slots for _, _, tree in drafted), time.perf_counter() - t, self.session.cache_length)
    return out
def step(self):
    rows = len(self._live_rows()); t = time.perf_counter(); self._diag = None
    out = orig_step(self)
    if self._diag: log.append((rows, self._drafted, self._diag[0], self._diag[1], time.perf_counter() - t, self._diag[2], self._committed))
    return out
BatchDecoder.step, BatchDecoder._verify = step, verify
cal, gates = default_calibration(), BatchGates()
def run(method):
    log.clear(); t = time.perf_counter()
    with torch.inference_mode():
        if method == "plain":
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)
        else:
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=B, max_new_tokens=128, profile=prof, gates=gates)
    el = time.perf_counter() - t
    n = sum(len(r.token_ids) for r in res)
    print(f"{method}: {n/el:.1f} tok/s, {el:.1f}s, steps={len(log)} step-sum={sum(l[4] for l in log):.1f}s")
    agg = collections.defaultdict(list)
    for rows, dr, width, fwd, whole, cache, com in log:
        if rows == B: agg[(dr, min(width - rows, 99) // 4 * 4)].append((fwd, whole, float(prof.predict(width, cache, rows)), com))
    for k in sorted(agg):
        a = np.array(agg[k]); print(f"   drafted={k[0]} nodes {k[1]}-{k[1]+3}: steps {len(a)} fwd {1000*a[:,0].mean():.0f} ms whole {1000*a[:,1].mean():.0f} ms priced {1000*a[:,2].mean():.0f} ms tokens/step {a[:,3].mean():.2f} ms/token {1000*a[:,1].sum()/a[:,3].sum():.1f}")
    return n/el
for r in range(rounds):
    p = run("plain"); s = run("spec"); print(f"round {r}: ratio {s/p:.3f}", flush=True)

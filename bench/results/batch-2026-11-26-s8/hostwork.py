"""Host work per step (the whole step minus its forward) at B rows: plain loop against the planner
(its gates warmed by one run first). Usage: hostwork.py B PROMPTS ROUNDS"""
import sys, time
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
orig_step, orig_verify = BatchDecoder.step, BatchDecoder._verify
def verify(self, drafted):
    t = time.perf_counter(); out = orig_verify(self, drafted); self._fwd = time.perf_counter() - t
    self._width = sum(tree.num_slots for _, _, tree in drafted); return out
def step(self):
    rows = len(self._live_rows()); t = time.perf_counter(); self._fwd = None
    out = orig_step(self)
    if self._fwd is not None: log.append((rows, self._width, self._fwd, time.perf_counter() - t))
    return out
BatchDecoder.step, BatchDecoder._verify = step, verify
cal, gates = default_calibration(), BatchGates()
def run(method):
    log.clear(); t = time.perf_counter()
    with torch.inference_mode():
        generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=None if method == "plain" else engine.new_drafter(calibration=cal)) for i in ids], max_rows=B, max_new_tokens=128, profile=prof, gates=gates)
    el = time.perf_counter() - t
    a = np.array([(f, w - f) for r, wd, f, w in log if r == B and wd == r])
    d = [(f, w) for r, wd, f, w in log if r == B and wd > r]
    steps = sum(w for *_, w in log)
    print(f"{method:5s}: {el:.2f}s, steps {steps:.2f}s ({len(log)}), outside steps {el - steps:.2f}s; plain {B}-row steps {len(a)}: fwd {1000*a[:,0].mean():.1f} ms host {1000*a[:,1].mean():.2f} ms; drafted {B}-row steps {len(d)}", flush=True)
run("spec")
for r in range(rounds):
    run("plain"); run("spec")

"""Plain steps' forward ms at B rows in: the plain loop, the planned loop with its gate held
closed, the planned loop as is. Usage: plainsteps.py B PROMPTS ROUNDS"""
import sys, time, collections
import numpy as np
import torch
from restdecode import Engine
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, DraftingGate, default_calibration
from restdecode.workloads import load_workload
B, N, rounds = (int(a) for a in sys.argv[1:4])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
log = []
orig_verify = BatchDecoder._verify
def verify(self, drafted):
    t = time.perf_counter(); out = orig_verify(self, drafted)
    width = sum(tree.num_slots for _, _, tree in drafted)
    log.append((len(drafted), width, time.perf_counter() - t, self.session.capacity if hasattr(self.session, "capacity") else None))
    return out
BatchDecoder._verify = verify
orig_should = DraftingGate.should_draft
cal = default_calibration()
def run(method):
    log.clear(); gates = BatchGates()
    DraftingGate.should_draft = (lambda self: False) if method == "closed" else orig_should
    t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=None if method == "plain" else engine.new_drafter(calibration=cal)) for i in ids], max_rows=B, max_new_tokens=128, profile=prof, gates=gates)
    el = time.perf_counter() - t
    plain = [s for r, w, s, c in log if r == B and w == r]
    print(f"{method:7s}: {sum(len(r.token_ids) for r in res)/el:.1f} tok/s; plain {B}-row forwards {len(plain)}: mean {1000*np.mean(plain):.1f} ms median {1000*np.median(plain):.1f}", flush=True)
run("spec")  # warm-up (numba, allocator)
for r in range(rounds):
    for m in ("plain", "closed", "spec"): run(m)

import sys, time, collections
import torch
from restdecode import Engine
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration
from restdecode.workloads import load_workload
B = int(sys.argv[1]); N = int(sys.argv[2]); rounds = int(sys.argv[3])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
log = []
orig_step = BatchDecoder.step
def step(self):
    rows = len(self._live_rows()); t = time.perf_counter()
    before = sum(len(r.output.tokens) if hasattr(r.output,'tokens') else 0 for r in self._rows.values())
    out = orig_step(self)
    log.append((rows, bool(getattr(self, '_drafted', False)), time.perf_counter() - t, sum(len(u.tokens) for u in out.values()) if out and hasattr(next(iter(out.values())), 'tokens') else None))
    return out
BatchDecoder.step = step
cal, gates = default_calibration(), BatchGates()
def run(method):
    log.clear(); t = time.perf_counter()
    with torch.inference_mode():
        if method == "plain":
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)
        else:
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=B, max_new_tokens=128, profile=engine.batch_profile, gates=gates)
    el = time.perf_counter() - t
    n = sum(len(r.token_ids) for r in res)
    agg = collections.defaultdict(lambda: [0, 0.0, 0])
    for rows, dr, s, toks in log:
        k = (1 << max(rows-1,0).bit_length(), dr); a = agg[k]; a[0] += 1; a[1] += s; a[2] += toks or 0
    print(f"{method}: {n/el:.1f} tok/s, {el:.1f}s, steps={len(log)} steptime={sum(l[2] for l in log):.1f}")
    for k in sorted(agg): a = agg[k]; print("   bucket", k, "steps", a[0], f"sec {a[1]:.2f} ms/step {1000*a[1]/a[0]:.0f} tok {a[2]}")
    return n/el
for r in range(rounds):
    p = run("plain"); s = run("spec"); print(f"round {r}: ratio {s/p:.3f}", flush=True)

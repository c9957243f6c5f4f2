"""B1: the batch planner with its gate, without it, and the single-sequence default, side by side."""
import sys, time, statistics
import torch
sys.path.insert(0, "/work/main/bench")
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, DraftingGate, default_calibration
from restdecode.workloads import load_workload

engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; engine.batch_profile
prompts = load_workload("mtbench", limit=int(sys.argv[1]) if len(sys.argv) > 1 else 8)
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in prompts]
log = []
orig = DraftingGate.record
def record(self, tokens, rows, seconds, plain_seconds):
    log.append((tokens, rows, seconds, plain_seconds, tokens * plain_seconds / rows - seconds))
    return orig(self, tokens, rows, seconds, plain_seconds)
DraftingGate.record = record
class Open(BatchGates):
    def should_draft(self, rows): return True
    def for_rows(self, rows):
        g = super().for_rows(rows); g.should_draft = lambda: True; return g
cal = {m: default_calibration() for m in ("gated", "open", "single")}
gates = {"gated": BatchGates(), "open": Open()}
for rnd in range(2):
    for m in ("gated", "single"):
        log.clear()
        t = time.perf_counter()
        with torch.inference_mode():
            if m == "single":
                res = [engine.generate(input_ids=i, drafter=engine.new_drafter(calibration=cal[m]), max_new_tokens=128) for i in ids]
            else:
                res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal[m])) for i in ids], max_rows=1, max_new_tokens=128, profile=engine.batch_profile, gates=gates[m])
        el = time.perf_counter() - t
        n = sum(len(r.token_ids) for r in res); steps = sum(r.stats.steps for r in res)
        extra = ""
        if log:
            sv = [l[4] for l in log]; sec = [l[2] for l in log]; pl = [l[3] for l in log]; tok = [l[0] for l in log]
            extra = f" drafted={len(log)} mean_saving={statistics.mean(sv)*1000:.1f}ms sec={statistics.mean(sec)*1000:.1f}ms plain={statistics.mean(pl)*1000:.1f}ms tok={statistics.mean(tok):.2f}"
        print(f"r{rnd} {m:7s} {n/el:6.1f} tok/s  {(n-len(res))/steps:.2f} tok/step{extra}", flush=True)

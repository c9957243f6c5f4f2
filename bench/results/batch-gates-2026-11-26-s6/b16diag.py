import sys, time, statistics
import torch
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, DraftingGate, default_calibration
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=16)]
log = []
orig, origp = DraftingGate.record, DraftingGate.record_plain
def record(self, tokens, rows, seconds, plain_seconds):
    orig(self, tokens, rows, seconds, plain_seconds)
    if rows == 16: log.append(("D", tokens, round(seconds*1000), round(plain_seconds*1000), round(self.saving*1000, 1), self._skip))
def record_plain(self, seconds):
    origp(self, seconds)
    log.append(("P", round(seconds*1000), round(self.plain_seconds*1000)))
DraftingGate.record, DraftingGate.record_plain = record, record_plain
cal, gates = default_calibration(), BatchGates()
for rnd in range(2):
    log.clear(); t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=16, max_new_tokens=128, profile=engine.batch_profile, gates=gates)
    el = time.perf_counter() - t
    n = sum(len(r.token_ids) for r in res)
    d = [l for l in log if l[0] == "D"]; p = [l for l in log if l[0] == "P"]
    print(f"round {rnd}: {n/el:.1f} tok/s drafted16={len(d)} plain(any rows)={len(p)}")
    print("D:", d[:40]); print("P:", p[:30])

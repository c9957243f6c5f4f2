import sys, time, collections
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
    if rows > 8: log.append(("D", rows, tokens, round(seconds*1000), round(plain_seconds*1000), round(self.saving*1000, 1), self._skip))
def record_plain(self, seconds, priced):
    origp(self, seconds, priced)
    if self is gates.for_rows(16): log.append(("P", round(seconds*1000), round(priced*1000), round(self.plain_ratio, 3)))
DraftingGate.record, DraftingGate.record_plain = record, record_plain
cal, gates = default_calibration(), BatchGates()
for rnd in range(int(sys.argv[1])):
    log.clear(); t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=16, max_new_tokens=128, profile=engine.batch_profile, gates=gates)
    el = time.perf_counter() - t
    n = sum(len(r.token_ids) for r in res)
    print(f"round {rnd}: {n/el:.1f} tok/s")
    for l in log: print(l)

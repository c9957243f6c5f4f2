"""1-row gate trace: one generate_batch call over N prompts (max_rows=1). args: N [separate]"""
import sys, time, torch, numpy as np
from restdecode import Engine
import restdecode.batch as rb
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration, DraftingGate
from restdecode.workloads import load_workload
N = int(sys.argv[1])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
log = []
orig_record = DraftingGate.record
def record(self, tokens, rows, seconds, plain):
    orig_record(self, tokens, rows, seconds, plain)
    log.append(("D", tokens, seconds, plain, self.saving, self.plain_ratio, self._skip))
DraftingGate.record = record
orig_rp = DraftingGate.record_plain
def record_plain(self, seconds, priced):
    orig_rp(self, seconds, priced)
    log.append(("P", 1, seconds, priced, self.saving, self.plain_ratio, self._skip))
DraftingGate.record_plain = record_plain
cal, gates = default_calibration(), BatchGates()
with torch.inference_mode():
    t = time.perf_counter()
    if "separate" in sys.argv:
        res = [generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal))], max_rows=1, max_new_tokens=128, profile=prof, gates=gates)[0] for i in ids]
    else:
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=1, max_new_tokens=128, profile=prof, gates=gates)
    el = time.perf_counter() - t
n = sum(len(r.token_ids) for r in res); steps = sum(r.stats.steps for r in res)
print(f"{n/el:.1f} tok/s, {(n-N)/steps:.2f} tokens/step, drafted {sum(1 for l in log if l[0]=='D')}, plain {sum(1 for l in log if l[0]=='P')}")
for k, l in enumerate(log[:400]):
    if k % 4 == 0 or l[0] == "P":
        print(k, l[0], l[1], f"sec {1000*l[2]:.1f} plain/priced {1000*l[3]:.1f} saving {1000*(l[4] or 0):.1f} ratio {l[5] or 0:.3f} skip {l[6]}")

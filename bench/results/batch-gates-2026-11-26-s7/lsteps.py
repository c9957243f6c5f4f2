import sys, time, collections
sys.path.insert(0, "bench")
import torch
from types import SimpleNamespace
from batch_bench import load_engine
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, DraftingGate, default_calibration
from restdecode.workloads import load_workload
B = int(sys.argv[1]); N = int(sys.argv[2]); rounds = int(sys.argv[3])
engine = load_engine(SimpleNamespace(model="smollm2-135m-instruct", datastore="~/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="llamacpp", batch_sizes=str(B), context=1024, device="cpu"))
engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
log = []; glog = []
orig_step = BatchDecoder.step
def step(self):
    rows = len(self._live_rows()); t = time.perf_counter()
    out = orig_step(self)
    log.append((rows, bool(getattr(self, '_drafted', False)), time.perf_counter() - t, sum(len(u.tokens) for u in out.values())))
    return out
BatchDecoder.step = step
orig, origp = DraftingGate.record, DraftingGate.record_plain
def record(self, tokens, rows, seconds, plain_seconds):
    orig(self, tokens, rows, seconds, plain_seconds)
    glog.append(("D", rows, tokens, round(seconds*1000), round(plain_seconds*1000), round(self.saving*1000, 1), self._skip))
def record_plain(self, seconds, priced):
    origp(self, seconds, priced)
    glog.append(("P", round(seconds*1000), round(priced*1000), round(self.plain_ratio, 3)))
DraftingGate.record, DraftingGate.record_plain = record, record_plain
cal, gates = default_calibration(), BatchGates()
def run(method):
    log.clear(); glog.clear(); t = time.perf_counter()
    with torch.inference_mode():
        if method == "plain":
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)
        else:
            res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=B, max_new_tokens=128, profile=engine.batch_profile, gates=gates)
    el = time.perf_counter() - t
    n = sum(len(r.token_ids) for r in res)
    agg = collections.defaultdict(lambda: [0, 0.0, 0])
    for rows, dr, s, toks in log:
        k = (1 << max(rows-1,0).bit_length(), dr); a = agg[k]; a[0] += 1; a[1] += s; a[2] += toks
    print(f"{method}: {n/el:.1f} tok/s, {el:.1f}s, steps={len(log)} steptime={sum(l[2] for l in log):.1f}")
    for k in sorted(agg): a = agg[k]; print("   bucket", k, "steps", a[0], f"sec {a[1]:.2f} ms/step {1000*a[1]/a[0]:.1f} tok {a[2]}")
    return n/el
for r in range(rounds):
    p = run("plain"); s = run("spec"); print(f"round {r}: ratio {s/p:.3f}", flush=True)
    print("gate log:", glog[:60])

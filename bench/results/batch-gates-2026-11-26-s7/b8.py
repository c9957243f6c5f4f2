import sys, time, collections
sys.path.insert(0, "bench")
import torch
from types import SimpleNamespace
from batch_bench import load_engine, hf_batched
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
B = int(sys.argv[1]); N = int(sys.argv[2]); rounds = int(sys.argv[3])
engine = load_engine(SimpleNamespace(model="smollm2-135m-instruct", datastore="~/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers", batch_sizes=str(B), context=1024, device="cpu"))
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
print("prompt lengths", [len(i) for i in ids])
steps = []; adds = []
orig_step, orig_add = BatchDecoder.step, BatchDecoder.add
def step(self):
    t = time.perf_counter(); out = orig_step(self); steps.append((len(self._live_rows()), time.perf_counter() - t)); return out
def add(self, r):
    t = time.perf_counter(); out = orig_add(self, r); adds.append(time.perf_counter() - t); return out
BatchDecoder.step, BatchDecoder.add = step, add
for r in range(rounds):
    steps.clear(); adds.clear()
    t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)
    ours = time.perf_counter() - t
    t = time.perf_counter(); tok, _ = hf_batched(engine, ids, B, 128); hf = time.perf_counter() - t
    print(f"round {r}: ours {ours:.2f}s (steps {sum(s for _, s in steps):.2f}s n={len(steps)}, adds {sum(adds):.2f}s n={len(adds)}), hf {hf:.2f}s, ours tokens {sum(len(x.token_ids) for x in res)} hf tokens {sum(len(x) for x in tok)}", flush=True)
    by = collections.defaultdict(list)
    for n, s in steps: by[n].append(s)
    print("   ms/step by rows:", {n: round(1000*sum(v)/len(v),1) for n, v in sorted(by.items())}, {n: len(v) for n, v in sorted(by.items())})

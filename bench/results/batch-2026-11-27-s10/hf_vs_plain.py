"""hf generate (static batch, left-padded) against our plain batched loop, whole runs alternated.
args: B N ROUNDS"""
import sys, time
import torch
sys.path.insert(0, "/work/main/bench")
import batch_bench
from restdecode import Engine
from restdecode.batch import BatchRequest, BatchDecoder, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
B, N, R = (int(a) for a in sys.argv[1:4])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
steps = []
orig = BatchDecoder.step
def step(self, **kw):
    t = time.perf_counter(); out = orig(self, **kw); steps.append(time.perf_counter() - t); return out
BatchDecoder.step = step
for r in range(R):
    for m in ("hf", "plain") if r % 2 == 0 else ("plain", "hf"):
        steps.clear(); t = time.perf_counter()
        with torch.inference_mode():
            if m == "hf":
                toks, _ = batch_bench.hf_batched(engine, ids, B, 128)
            else:
                toks = [x.token_ids for x in generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)]
        el = time.perf_counter() - t; n = sum(len(x) for x in toks)
        extra = f" steps {len(steps)} sum {sum(steps):.2f}s mean {1000*sum(steps)/len(steps):.1f} ms, outside steps {el-sum(steps):.2f}s" if steps else ""
        print(f"round {r} {m:5s}: {n/el:6.1f} tok/s {el:.2f}s{extra}", flush=True)

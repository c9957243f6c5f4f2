"""Server-like lone row: one long-lived BatchDecoder (as _BatchLane) vs engine.generate, request by request alternated."""
import sys, time
import torch
from restdecode import Engine
from restdecode.batch import BatchDecoder, BatchRequest
from restdecode.decode import prompt_token_ids
from restdecode.options import GenerationOptions
from restdecode.workloads import load_workload
N, R = int(sys.argv[1]), int(sys.argv[2])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; bp = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
dec = BatchDecoder(engine.model, engine.tokenizer, options=GenerationOptions(max_new_tokens=128), profile=bp)
def lane(p):
    h = dec.add(BatchRequest(input_ids=p, drafter=engine.new_drafter()))
    while dec.active: dec.step()
    r = dec.result(h); dec.remove(h); return r
def single(p):
    return engine.generate(input_ids=p, drafter=engine.new_drafter(), max_new_tokens=128)
with torch.inference_mode():
    lane(ids[0]); single(ids[0])
    for r in range(R):
        t = {"lane": [0.0, 0, 0], "single": [0.0, 0, 0]}
        order = ["lane", "single"] if r % 2 == 0 else ["single", "lane"]
        for p in ids:
            for m in order:
                s = time.perf_counter(); res = (lane if m == "lane" else single)(p); e = time.perf_counter() - s
                t[m][0] += e; t[m][1] += len(res.token_ids); t[m][2] += res.stats.steps
            order.reverse()
        print(r, {m: (round(v[1] / v[0], 2), round((v[1] - N) / v[2], 3)) for m, v in t.items()}, "ratio", round((t["lane"][1] / t["lane"][0]) / (t["single"][1] / t["single"][0]), 3), flush=True)

import sys, time
sys.path.insert(0, "bench")
import torch
from types import SimpleNamespace
from batch_bench import load_engine, hf_batched
from restdecode import head as H
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
sizes = [int(b) for b in sys.argv[1].split(",")]; N = int(sys.argv[2]); rounds = int(sys.argv[3])
engine = load_engine(SimpleNamespace(model="smollm2-135m-instruct", datastore="~/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers", batch_sizes="16", context=1024, device="cpu"))
table = H.head_widths_for(engine.model); print("table", table[:16])
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
def ours(pad, B):
    H._KNOWN[engine.model] = table if pad else None
    t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=B, max_new_tokens=128)
    return time.perf_counter() - t, [r.token_ids for r in res]
for B in sizes:
    for r in range(rounds):
        order = ["pad", "nopad", "hf"]; order = order[r % 3:] + order[:r % 3]
        out = {}
        for m in order:
            if m == "hf":
                t = time.perf_counter(); hf_batched(engine, ids, B, 128); out[m] = time.perf_counter() - t
            else:
                out[m], toks = ours(m == "pad", B); out[m + "_toks"] = toks
        same = out["pad_toks"] == out["nopad_toks"]
        print(f"B={B} round {r}: pad {out['pad']:.2f}s nopad {out['nopad']:.2f}s hf {out['hf']:.2f}s | nopad/pad {out['nopad']/out['pad']:.3f} hf/pad {out['hf']/out['pad']:.3f} identical={same}", flush=True)

import sys, time, cProfile, pstats, torch
sys.path.insert(0, "/work/main/bench")
import batch_bench
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=8)]
def ours():
    with torch.inference_mode():
        return generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=8, max_new_tokens=64)
def hf():
    with torch.inference_mode():
        return batch_bench.hf_batched(engine, ids, 8, 64)
ours(); hf()
for name, f in (("ours", ours), ("hf", hf)):
    p = cProfile.Profile(); t = time.perf_counter(); p.enable(); f(); p.disable(); print(name, "elapsed", time.perf_counter() - t)
    st = pstats.Stats(p); st.sort_stats("tottime").print_stats(14)

import sys, time, torch, numpy as np
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch, BatchDecoder
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration, DraftingGate
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=6)]
DraftingGate.should_draft = lambda self: True
cal_b, cal_s, gates = default_calibration(), default_calibration(), BatchGates()
corr = []
for rnd in range(2):
    t = time.perf_counter()
    with torch.inference_mode():
        dec = None
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal_b)) for i in ids], max_rows=1, max_new_tokens=128, profile=(None if "noprof" in sys.argv else prof), gates=gates)
    el = time.perf_counter() - t
    steps = sum(r.stats.steps for r in res); n = sum(len(r.token_ids) for r in res)
    ts = np.concatenate([r.stats.tree_size_per_step for r in res]); acc = np.concatenate([r.stats.accepted_per_step for r in res])
    ver = sum(r.stats.time_verify for r in res)
    print(f"round {rnd} batch : {n/el:.1f} tok/s, tokens/step {(n-len(res))/steps:.2f}, tree mean {ts.mean():.2f} drafted {np.mean(ts>0):.2f}, verify {ver:.2f}s {1000*ver/steps:.1f} ms/step, total {el:.1f}s", flush=True)
    t = time.perf_counter()
    with torch.inference_mode():
        res = [engine.generate(input_ids=i, drafter=engine.new_drafter(calibration=cal_s), max_new_tokens=128) for i in ids]
    el = time.perf_counter() - t; n = sum(len(r.token_ids) for r in res); steps = sum(r.stats.steps for r in res)
    ts = np.concatenate([r.stats.tree_size_per_step for r in res])
    ver = sum(r.stats.time_verify for r in res)
    print(f"round {rnd} single: {n/el:.1f} tok/s, tokens/step {(n-len(res))/steps:.2f}, tree mean {ts.mean():.2f} drafted {np.mean(ts>0):.2f}, verify {ver:.2f}s {1000*ver/steps:.1f} ms/step, total {el:.1f}s", flush=True)
print("single profile:", engine.profile)
print("batch profile rows1:", prof.for_rows(1))
for w in (1, 2, 4, 8, 16, 32):
    print(w, float(engine.profile.predict(w, 200)), float(prof.for_rows(1).predict(w, 200)))

import sys, time, torch
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration, DraftingGate
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=6)]
if len(sys.argv) > 1: DraftingGate.should_draft = lambda self: True
cal, gates = default_calibration(), BatchGates()
for rnd in range(2):
    t = time.perf_counter()
    with torch.inference_mode():
        res = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal)) for i in ids], max_rows=1, max_new_tokens=128, profile=prof, gates=gates)
    el = time.perf_counter() - t
    steps = sum(r.stats.steps for r in res); drafted = sum(s > 0 for r in res for s in r.stats.tree_size_per_step)
    n = sum(len(r.token_ids) for r in res)
    g = gates.for_rows(1)
    print(f"round {rnd}: {n/el:.1f} tok/s, tokens/step {(n-len(res))/steps:.2f}, drafted {drafted}/{steps} steps, gate saving {g.saving} steps {g.steps} backoff {g._backoff}", flush=True)
    t = time.perf_counter()
    with torch.inference_mode():
        res = [engine.generate(input_ids=i, drafter=engine.new_drafter(calibration=cal), max_new_tokens=128) for i in ids]
    el = time.perf_counter() - t; n = sum(len(r.token_ids) for r in res); steps = sum(r.stats.steps for r in res)
    print(f"   single default: {n/el:.1f} tok/s, tokens/step {(n-len(res))/steps:.2f}", flush=True)

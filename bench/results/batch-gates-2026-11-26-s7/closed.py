import time, cProfile, pstats
import torch
from restdecode import Engine
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import DraftingGate, default_calibration
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=16)]
DraftingGate.should_draft = lambda self: False
cal = default_calibration()
def run(planned):
    with torch.inference_mode():
        return generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal) if planned else None) for i in ids], max_rows=16, max_new_tokens=128, profile=engine.batch_profile)
run(True)
for planned in (False, True, False, True):
    pr = cProfile.Profile(); pr.enable(); t = time.perf_counter(); run(planned); el = time.perf_counter() - t; pr.disable()
    st = pstats.Stats(pr)
    def cum(name):
        return sum(v[3] for k, v in st.stats.items() if k[2] == name)
    print(f"planned={planned}: {el:.2f}s step {cum('step'):.2f} _draft {cum('_draft'):.2f} _accept_and_commit {cum('_accept_and_commit'):.2f} observe {cum('observe'):.2f} _judge {cum('_judge_drafting'):.3f}", flush=True)

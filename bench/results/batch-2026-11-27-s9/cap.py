import sys, torch
from restdecode import Engine
from restdecode.batch import BatchDecoder, BatchRequest
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import default_calibration
from restdecode.options import GenerationOptions
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=16)]
print("prompt lengths", sorted(len(i) for i in ids))
for name, mk in (("plain", lambda: None), ("planner", lambda: engine.new_drafter(calibration=default_calibration()))):
    d = BatchDecoder(engine.model, engine.tokenizer, options=GenerationOptions(max_new_tokens=128), profile=prof)
    with torch.inference_mode():
        for i in ids: d.add(BatchRequest(input_ids=i, drafter=mk()))
        caps = []
        while d.active:
            d.step(draining=True); caps.append(d.session.cache.capacity)
    print(name, "capacity over steps:", sorted(set(caps)), "first at max:", caps.index(max(caps)))

import sys, time
import torch
from restdecode import Engine
from restdecode.batch import BatchDecoder, BatchRequest
from restdecode.decode import prompt_token_ids
from restdecode.options import GenerationOptions
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; bp = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=8)]
dec = BatchDecoder(engine.model, engine.tokenizer, options=GenerationOptions(max_new_tokens=128), profile=bp)
with torch.inference_mode():
  for p in ids:
    h = dec.add(BatchRequest(input_ids=p, drafter=engine.new_drafter()))
    while dec.active: dec.step()
    r = dec.result(h); dec.remove(h)
    tc = dec.tree_costs
    print(round(tc.factor, 3), {k: round(v, 3) for k, v in tc._means.items()}, tc._counts, round((len(r.token_ids)-1)/r.stats.steps, 3), flush=True)

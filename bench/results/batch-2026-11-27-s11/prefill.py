"""Prefill cost: our per-row add (prefill + copy into the batch session) vs one left-padded batched forward of the same prompts."""
import sys, time
import torch
from restdecode import Engine
from restdecode.batch import BatchDecoder, BatchRequest
from restdecode.decode import prompt_token_ids
from restdecode.options import GenerationOptions
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=16)]
print("prompt lengths", [len(i) for i in ids])
model = engine.model
def ours(B):
    dec = BatchDecoder(model, engine.tokenizer, options=GenerationOptions(max_new_tokens=128))
    t = time.perf_counter()
    dec.add_many([BatchRequest(input_ids=i) for i in ids[:B]])
    return time.perf_counter() - t
def hf(B):
    L = max(len(i) for i in ids[:B])
    x = torch.tensor([[0] * (L - len(i)) + i for i in ids[:B]]); m = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids[:B]])
    t = time.perf_counter()
    model(input_ids=x, attention_mask=m, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t
def single(B):
    t = time.perf_counter()
    for i in ids[:B]: model(input_ids=torch.tensor([i]), use_cache=True, logits_to_keep=1)
    return time.perf_counter() - t
with torch.inference_mode():
    ours(2); hf(2); single(2)
    for B in (8, 16):
        for r in range(3):
            print(B, "ours add_many", round(ours(B), 3), "single fwd", round(single(B), 3), "hf batched", round(hf(B), 3), flush=True)

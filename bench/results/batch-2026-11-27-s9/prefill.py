import time, torch
from restdecode import Engine
from restdecode.batch import BatchDecoder
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=8)]
tok = engine.tokenizer; model = engine.model
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
L = max(map(len, ids))
batch = torch.tensor([[pad] * (L - len(i)) + i for i in ids]); mask = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids])
with torch.inference_mode():
    for r in range(3):
        d = BatchDecoder(model, tok); t = time.perf_counter()
        for i in ids: d.session.add_row(i)
        a = time.perf_counter() - t; t = time.perf_counter()
        model(input_ids=batch, attention_mask=mask, use_cache=True)
        b = time.perf_counter() - t
        print(f"round {r}: 8 prefills one by one (our add_row) {a:.2f}s; one left-padded batch of 8 ({L} columns, {sum(map(len, ids))} real tokens) {b:.2f}s", flush=True)

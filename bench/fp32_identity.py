"""fp32 identity of the priced draft-model planner on the Qwen pair (issue 16): plain greedy vs
Engine.new_drafter() (draft model + retrieval), first 3 HumanEval prompts, 128 new tokens, both
models forced to fp32. Prints one line per prompt; nothing here is a timing (run it alone anyway).

    .venv/bin/python bench/fp32_identity.py
"""
import json, time, torch
from restdecode.engine import Engine
from restdecode.models import load
from restdecode.decode import generate
from restdecode.drafting import NoDrafter
from restdecode.workloads import load_workload
target, tok = load("qwen2.5-coder-1.5b-instruct", dtype=torch.float32)
draft, _ = load("qwen2.5-coder-0.5b-instruct", dtype=torch.float32)
import glob, os
from pathlib import Path
from restdecode.engine import open_datastore
from restdecode.latency import LatencyProfile
# the bf16 target's cached profile prices the steps: this run checks identity, not speed
newest = max(glob.glob(os.path.expanduser("~/.cache/restdecode/profiles/qwen2.5-coder-1.5b-instruct-q4_k_m-cc324af070c2-*.json")), key=os.path.getmtime)
store = open_datastore(Path(os.path.expanduser("~/.cache/restdecode/datastores/code-stdlib-qwen.rds")), tok)
engine = Engine(target, tok, datastore=store, draft_model=draft, progress=False, profile=LatencyProfile.load(newest))
results = []
for prompt in load_workload("humaneval", limit=3):
    ids = tok.apply_chat_template(prompt.messages, add_generation_prompt=True) if prompt.messages else tok(prompt.text)["input_ids"]
    if hasattr(ids, "input_ids"): ids = ids["input_ids"]
    t0 = time.perf_counter(); plain = generate(target, tok, input_ids=list(ids), drafter=NoDrafter(), max_new_tokens=128); t1 = time.perf_counter()
    drafter = engine.new_drafter()
    spec = generate(target, tok, input_ids=list(ids), drafter=drafter, max_new_tokens=128); t2 = time.perf_counter()
    results.append({"prompt": prompt.id, "identical": plain.token_ids == spec.token_ids, "tokens": len(plain.token_ids),
                    "plain_s": t1 - t0, "spec_s": t2 - t1, "accepted_per_step": sum(spec.stats.accepted_per_step) / len(spec.stats.accepted_per_step)})
    print(results[-1], flush=True)
print(json.dumps(results))

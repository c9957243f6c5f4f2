import os, sys, time
import torch
from restdecode import Engine
from restdecode import head as H
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import default_calibration
from restdecode.workloads import load_workload
ds = "/root/.cache/restdecode/datastores/sharegpt-smollm2.rds"
padded = Engine.load("smollm2-135m-instruct", datastore=ds, backend="transformers")
padded.profile
os.environ["RESTDECODE_HEAD_PADDING"] = "0"
plain = Engine.load("smollm2-135m-instruct", datastore=ds, backend="transformers")
plain.profile
print("tables:", H.head_widths_for(padded.model) is not None, H.head_widths_for(plain.model))
ids = [prompt_token_ids(padded.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=int(sys.argv[1]))]
cals = {"pad": default_calibration(), "nopad": default_calibration()}
for r in range(int(sys.argv[2])):
    out = {}
    for name in (["pad", "nopad"] if r % 2 == 0 else ["nopad", "pad"]):
        e = padded if name == "pad" else plain
        t = time.perf_counter(); toks = 0; steps = 0; res = []
        with torch.inference_mode():
            for i in ids:
                g = e.generate(input_ids=i, drafter=e.new_drafter(calibration=cals[name]), max_new_tokens=128)
                toks += len(g.token_ids); steps += g.stats.steps; res.append(g.token_ids)
        out[name] = (toks / (time.perf_counter() - t), toks / steps, res)
    print(f"round {r}: pad {out['pad'][0]:.1f} tok/s ({out['pad'][1]:.2f}/step) nopad {out['nopad'][0]:.1f} ({out['nopad'][1]:.2f}/step) pad/nopad {out['pad'][0]/out['nopad'][0]:.3f} identical {out['pad'][2]==out['nopad'][2]}", flush=True)

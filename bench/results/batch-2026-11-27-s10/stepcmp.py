"""Our 8-row plain step vs a generate-style padded decode step, interleaved step by step."""
import sys, time, torch, numpy as np
sys.path.insert(0, "/work/main/bench")
from restdecode import Engine
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
from restdecode.backends.transformers_batch import TransformersBatchSession
from restdecode.drafting.tree import DraftTree
from transformers import DynamicCache
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
model, tok = engine.model, engine.tokenizer
B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
ids = [prompt_token_ids(tok, p.text, p.messages) for p in load_workload("mtbench", limit=B)]
empty = DraftTree.empty().compile(model.device)

def ours_setup():
    s = TransformersBatchSession(model)
    rows, pend = [], []
    for i in ids:
        r, lg = s.add_row(i); rows.append(r); pend.append(int(lg.argmax()))
    return s, rows, pend
def ours_step(st):
    s, rows, pend = st
    logits = s.verify([(r, p, empty) for r, p in zip(rows, pend)])
    for k, (r, lg) in enumerate(zip(rows, logits)):
        s.commit(r, [0]); pend[k] = int(lg[0].argmax())

def hf_setup():
    L = max(map(len, ids))
    inp = torch.full((B, L), tok.pad_token_id or 0); mask = torch.zeros(B, L, dtype=torch.long)
    for k, i in enumerate(ids):
        inp[k, L - len(i):] = torch.tensor(i); mask[k, L - len(i):] = 1
    cache = DynamicCache()
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)
    nxt = out.logits[:, -1].argmax(-1)
    return [cache, mask, nxt, pos[:, -1]]
def hf_step(st):
    cache, mask, nxt, pos = st
    mask = torch.cat([mask, mask.new_ones(B, 1)], 1); pos = pos + 1
    out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None], past_key_values=cache, use_cache=True, logits_to_keep=1)
    st[1], st[2], st[3] = mask, out.logits[:, -1].argmax(-1), pos

with torch.inference_mode():
    for rnd in range(2):
        a, b = ours_setup(), hf_setup()
        ta, tb = [], []
        for k in range(STEPS):
            order = [(ours_step, a, ta), (hf_step, b, tb)]
            if k % 2: order.reverse()
            for f, st, t in order:
                m = time.perf_counter(); f(st); t.append(time.perf_counter() - m)
        ta, tb = np.array(ta), np.array(tb)
        print(f"round {rnd}: ours mean {ta.mean()*1e3:.1f} ms median {np.median(ta)*1e3:.1f}; hf mean {tb.mean()*1e3:.1f} median {np.median(tb)*1e3:.1f}; ratio of sums {ta.sum()/tb.sum():.3f}", flush=True)
    if "prof" in sys.argv:
        from torch.profiler import profile, ProfilerActivity
        for name, f, st in (("ours", ours_step, a), ("hf", hf_step, b)):
            for _ in range(3): f(st)
            with profile(activities=[ProfilerActivity.CPU]) as p:
                for _ in range(20): f(st)
            print(name); print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=22))

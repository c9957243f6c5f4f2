import sys, time, torch, numpy as np
exec(open("/tmp/diag/stepcmp.py").read().split("with torch.inference_mode():")[0])
import restdecode.backends.transformers_batch as tb
fw = {"t": 0.0}; lay = {"t": 0.0}
orig_layout = tb.TransformersBatchSession._layout
def timed_layout(self, *a):
    m = time.perf_counter(); r = orig_layout(self, *a); lay["t"] += time.perf_counter() - m; return r
tb.TransformersBatchSession._layout = timed_layout
orig_call = type(model).__call__
class Timed:
    pass
def ours_step_t(st):
    s, rows, pend = st
    logits = s.verify([(r, p, empty) for r, p in zip(rows, pend)])
    for k, (r, lg) in enumerate(zip(rows, logits)):
        s.commit(r, [0]); pend[k] = int(lg[0].argmax())
fwd = model.forward
def tforward(*a, **k):
    m = time.perf_counter(); r = fwd(*a, **k); fw["t"] += time.perf_counter() - m; return r
model.forward = tforward
with torch.inference_mode():
    for rnd in range(3):
        a, b = ours_setup(), hf_setup()
        ta, tb_ = [], []; fa = fb = 0.0
        fw["t"] = 0; lay["t"] = 0
        for k in range(100):
            f0 = fw["t"]; m = time.perf_counter(); ours_step_t(a); ta.append(time.perf_counter() - m); fa += fw["t"] - f0
            f0 = fw["t"]; m = time.perf_counter(); hf_step(b); tb_.append(time.perf_counter() - m); fb += fw["t"] - f0
        print(f"ours step {np.sum(ta):.2f}s forward {fa:.2f}s layout {lay['t']:.3f}s | hf step {np.sum(tb_):.2f}s forward {fb:.2f}s")

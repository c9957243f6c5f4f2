import sys, time, collections
sys.argv = ["x", "--batch-size", sys.argv[1], "--limit", sys.argv[2], "--rounds", sys.argv[3], "--out", "/tmp/diag/out"]
import numpy as np
from restdecode.batch import BatchDecoder
sys.path.insert(0, "/work/main/bench")
import batch_paired
log = []
orig = BatchDecoder.step
def step(self, **kw):
    rows = len(self._live_rows()); t = time.perf_counter()
    out = orig(self, **kw)
    log.append((id(self), self.profile is not None, rows, self._drafted, time.perf_counter() - t, sum(len(u.tokens) for u in out.values())))
    return out
BatchDecoder.step = step
orig_round = batch_paired.paired_round
def paired_round(*a, **k):
    log.clear(); r = orig_round(*a, **k)
    agg = collections.defaultdict(list)
    for _, planned, rows, drafted, sec, toks in log:
        band = "16" if rows == 16 else "9-15" if rows > 8 else "5-8" if rows > 4 else "1-4"
        agg[(band, planned, drafted)].append((sec, toks))
    for key in sorted(agg):
        a = np.array(agg[key]); print(f"  rows {key[0]:>4} {'planner' if key[1] else 'plain  '} drafted={key[2]!s:5} steps {len(a):3d} sum {a[:,0].sum():6.2f}s mean {1000*a[:,0].mean():6.1f} ms tokens {a[:,1].sum():5.0f} ms/token {1000*a[:,0].sum()/a[:,1].sum():5.2f}", flush=True)
    return r
batch_paired.paired_round = paired_round
batch_paired.main()

"""A/B: planner with the draining rule vs planner without, paired steps. args: B N rounds"""
import sys, time
import numpy as np, torch
sys.path.insert(0, "/work/main/bench")
import batch_paired as bp
from restdecode import Engine
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration
from restdecode.options import GenerationOptions
from restdecode.workloads import load_workload
B, N, R = (int(a) for a in sys.argv[1:4])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
opts = GenerationOptions(max_new_tokens=128)
cals = {k: default_calibration() for k in "ab"}; gates = {k: BatchGates() for k in "ab"}
class Undrained(bp._Loop):
    def advance(self):
        w = self.waiting; self.waiting = w or [None]  # step sees "something waits"
        try:
            if w: return super().advance()
            started = time.perf_counter()
            self.waiting = []
            if self.decoder.active:
                self.row_steps += len(self.decoder.active); self.steps += 1
                self.decoder.step(draining=False)
            self.seconds += time.perf_counter() - started
        finally:
            if not w: self.waiting = []
ratios = []
with torch.inference_mode():
    for r in range(R):
        a = bp._Loop(engine, ids, B, opts, lambda: engine.new_drafter(calibration=cals["a"]), profile=prof, gates=gates["a"])
        b = Undrained(engine, ids, B, opts, lambda: engine.new_drafter(calibration=cals["b"]), profile=prof, gates=gates["b"])
        order = [a, b] if r % 2 == 0 else [b, a]
        while not (a.done and b.done):
            for loop in order:
                if not loop.done: loop.advance()
            order.reverse()
        assert a.outputs() == b.outputs()
        ta = sum(len(t) for t in a.outputs()) / a.seconds; tb = sum(len(t) for t in b.outputs()) / b.seconds
        ratios.append(ta / tb)
        print(f"round {r}: drained {ta:.1f} tok/s ({a.steps} steps), undrained {tb:.1f} tok/s ({b.steps} steps), ratio {ta/tb:.3f}", flush=True)
r = np.array(ratios); print(f"B={B} N={N}: drained/undrained median {np.median(r):.3f} mean {r.mean():.3f} {bp.bootstrap_interval(r)}")

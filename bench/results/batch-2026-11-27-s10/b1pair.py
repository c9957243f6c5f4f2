"""1-row batch decoder vs single default, interleaved request by request. args: variant N rounds
variant: batchprof | singleprof | singleprof-open"""
import sys, time, torch, numpy as np
from restdecode import Engine
import restdecode.batch as rb
from restdecode.batch import BatchRequest, generate_batch
from restdecode.decode import prompt_token_ids
from restdecode.drafting.planner import BatchGates, default_calibration, DraftingGate
from restdecode.workloads import load_workload
variant, N, R = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
engine.profile; prof = engine.batch_profile
ids = [prompt_token_ids(engine.tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=N)]
if variant.startswith("singleprof"):
    orig = rb.BatchDecoder._cost_model
    def cm(self, drafter, rows):
        return drafter.profile if rows == 1 else orig(self, drafter, rows)
    rb.BatchDecoder._cost_model = cm
if variant.endswith("open"):
    orig_for = BatchGates.for_rows
    class Open:
        def should_draft(self): return True
        def plain_seconds(self, *a): return 1.0
        def record(self, *a): pass
        def record_plain(self, *a): pass
    BatchGates.for_rows = lambda self, rows: Open() if rows == 1 else orig_for(self, rows)
cal_b, cal_s, gates = default_calibration(), default_calibration(), BatchGates()
ratios = []
with torch.inference_mode():
    generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=ids[0], drafter=engine.new_drafter(calibration=default_calibration()))], max_rows=1, max_new_tokens=16, profile=prof, gates=BatchGates())
    for rnd in range(R):
        tb = ts = nb = ns = sb = ss = 0
        for k, i in enumerate(ids):
            for which in (("b", "s") if (k + rnd) % 2 == 0 else ("s", "b")):
                m = time.perf_counter()
                if which == "b":
                    r = generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i, drafter=engine.new_drafter(calibration=cal_b))], max_rows=1, max_new_tokens=128, profile=prof, gates=gates)[0]
                    tb += time.perf_counter() - m; nb += len(r.token_ids); sb += r.stats.steps; out_b = r.token_ids
                else:
                    r = engine.generate(input_ids=i, drafter=engine.new_drafter(calibration=cal_s), max_new_tokens=128)
                    ts += time.perf_counter() - m; ns += len(r.token_ids); ss += r.stats.steps; out_s = r.token_ids
            assert out_b == out_s
        ratios.append((nb / tb) / (ns / ts))
        print(f"{variant} round {rnd}: batch {nb/tb:.1f} tok/s ({(nb-N)/sb:.2f}/step), single {ns/ts:.1f} tok/s ({(ns-N)/ss:.2f}/step), ratio {ratios[-1]:.3f}", flush=True)

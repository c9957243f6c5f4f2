import time, torch, numpy as np
from restdecode import Engine
from restdecode.backends.transformers import TransformersSession
from restdecode.backends.transformers_batch import TransformersBatchSession
from restdecode.latency import random_tree
from restdecode.head import padded_head
engine = Engine.load("smollm2-135m-instruct", datastore="/root/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers")
model = engine.model
rng = np.random.default_rng(0)
prompt = rng.integers(0, 49152, 250).tolist()
bs = TransformersBatchSession(model, head_widths=getattr(engine.backend, "head_widths", None))
with torch.inference_mode():
    row, _ = bs.add_row(prompt)
    ss = engine.backend.session() if hasattr(engine.backend, "session") else TransformersSession(model)
    ss.prefill(prompt)
    print(type(ss))
    for k in (0, 4, 8, 16, 32):
        tree = random_tree(k, 49152, rng).compile()
        tb, ts = [], []
        for rep in range(30):
            m = time.perf_counter(); bs.verify([(row, 5, tree)]); tb.append(time.perf_counter() - m); bs.commit(row, [])
            m = time.perf_counter(); ss.verify(5, tree); ts.append(time.perf_counter() - m); ss.commit([])
        print(f"k={k}: batch {1000*np.median(tb):.1f} ms, single {1000*np.median(ts):.1f} ms", flush=True)

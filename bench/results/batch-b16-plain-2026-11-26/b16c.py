import sys, time, torch, statistics
sys.argv=['x']
sys.path.insert(0,'/work/main/bench')
import batch_bench as bb
from restdecode.decode import prompt_token_ids
from restdecode.workloads import load_workload
from restdecode.batch import BatchRequest, generate_batch
import argparse
args=argparse.Namespace(model="smollm2-135m-instruct", datastore="~/.cache/restdecode/datastores/sharegpt-smollm2.rds", backend="transformers", device="cpu", batch_sizes="16")
engine=bb.load_engine(args)
ids=[prompt_token_ids(engine.tokenizer,p.text,p.messages) for p in load_workload("mtbench",limit=16)]
def ours(N):
    with torch.inference_mode():
        return generate_batch(engine.model, engine.tokenizer, [BatchRequest(input_ids=i) for i in ids], max_rows=16, max_new_tokens=N, profile=None)
def hf(N):
    return bb.hf_batched(engine, ids, 16, N)
ours(2); hf(2)
res={"ours":[],"hf":[]}
for r in range(6):
  order=(("ours",ours),("hf",hf)) if r%2==0 else (("hf",hf),("ours",ours))
  pair={}
  for name,f in order:
      t=time.perf_counter(); f(129); pair[name]=time.perf_counter()-t
      res[name].append(pair[name])
  print(r, {k:"%.2f"%v for k,v in pair.items()}, "hf/ours %.3f"%(pair["hf"]/pair["ours"]), flush=True)
print("median ours %.2f hf %.2f"%(statistics.median(res["ours"]), statistics.median(res["hf"])))

"""llama.cpp prefill cost: rows joining together (add_rows, packed into llama_decode calls of
up to 512 tokens) against one add_row per prompt, MT-Bench prompts on SmolLM2's GGUF."""
import sys
import time

from restdecode.backends.llamacpp import LlamaCppBackend
from restdecode.decode import prompt_token_ids
from restdecode.models import gguf_path, load_tokenizer
from restdecode.workloads import load_workload

model = sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"
tokenizer = load_tokenizer(model)
ids = [prompt_token_ids(tokenizer, p.text, p.messages) for p in load_workload("mtbench", limit=16)]
print(model, "prompt lengths", [len(i) for i in ids], flush=True)
backend = LlamaCppBackend(gguf_path(model), n_ctx=16 * 1024)


def packed(count):
    session = backend.batch_session()
    started = time.perf_counter()
    session.add_rows(ids[:count])
    return time.perf_counter() - started


def one_by_one(count):
    session = backend.batch_session()
    started = time.perf_counter()
    for prompt in ids[:count]:
        session.add_row(prompt)
    return time.perf_counter() - started


packed(2), one_by_one(2)
for count in (8, 16):
    for _ in range(3):
        print(count, "packed", round(packed(count), 3), "one by one", round(one_by_one(count), 3),
              flush=True)

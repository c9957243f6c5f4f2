"""Benchmark decoding methods side by side on one workload, greedy, batch 1.

Methods (run interleaved per prompt, each warmed up once, model loading not timed):
  hf-greedy              model.generate(do_sample=False) (transformers)
  hf-prompt-lookup       model.generate(do_sample=False, prompt_lookup_num_tokens=10)
  llamacpp-greedy        llama-cpp-python's Llama.generate, greedy, on the model's GGUF file
  llamacpp-prompt-lookup the same with LlamaPromptLookupDecoding(num_pred_tokens=10)
  rest                   our engine with REST's published drafter (retrieval only, 64 nodes)
  restdecode             our engine with our default drafter (retrieval + context, each
                         step's tree sized by this machine's latency profile, measured once)
  plain                  our engine without drafting
  restdecode-memory      restdecode that also searches its own earlier outputs of the run
                         (not in the default lists; name it in --methods)

With --draft-model (a smaller model with the same tokenizer), these are offered and run by default:
  hf-assisted            model.generate(do_sample=False, assistant_model=DRAFT) (transformers)
  draft-model            our engine with the draft model's drafts alone (--draft-k tokens,
                         --draft-branches chains)
  draft-model+retrieval  our engine with the draft model merged with retrieval + context
                         (what `generate --draft-model` uses)

Our engine's methods run on --backend; hf-* always run transformers (loaded only when
asked for), llamacpp-* always llama.cpp (GGUF models only: asset names, ASSET:TYPE, .gguf).
The baseline that identity and speedups refer to is llamacpp-greedy on the llamacpp backend
(when it runs), else hf-greedy.

Writes results.json, report.md and PNG plots into --out, then prints the summary table.
See docs/bench.md for the timing rules and the results.json schema.

examples:
  restdecode bench mtbench --limit 10 --max-new-tokens 128 --out bench-out
  restdecode bench mtbench --backend llamacpp --limit 10 --out bench-llamacpp
  restdecode bench humaneval --limit 20 --methods hf-greedy,restdecode --out he-out
  restdecode bench prompts:my.jsonl --model ./my-hf-model --datastore my.rds --out my-out
  restdecode bench humaneval --model qwen2.5-coder-1.5b-instruct \\
      --draft-model qwen2.5-coder-0.5b-instruct --backend transformers --limit 10 --out he-qwen
"""

from __future__ import annotations

import argparse
from pathlib import Path

from restdecode.benchmark.methods import DEFAULT_METHODS, LLAMACPP_DEFAULT_METHODS
from restdecode.cli.common import add_model_argument, draft_model_options


def register(parser: argparse.ArgumentParser) -> None:
    """Add the bench arguments."""
    parser.add_argument("workload", metavar="WORKLOAD",
                        help="mtbench, humaneval, or prompts:PATH (JSONL of {\"prompt\": ...} "
                             "or {\"messages\": [...]})")
    add_model_argument(parser)
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only the first N prompts (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N",
                        help="new tokens per generation (default: 128)")
    parser.add_argument("--methods", default=None, metavar="LIST",
                        help="comma-separated methods, in run order (default: "
                             f"{','.join(DEFAULT_METHODS)}; with the llamacpp backend: "
                             f"{','.join(LLAMACPP_DEFAULT_METHODS)})")
    parser.add_argument("--turns", type=int, choices=(1, 2), default=1,
                        help="MT-Bench turns; with 2, each method's own first answer is in the "
                             "second turn's history (default: 1)")
    parser.add_argument("--datastore", type=Path, default=None, metavar="FILE",
                        help="datastore for rest/restdecode (default: the one `make demo` builds "
                             "for the default model, if present)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="directory for results.json, report.md and the plots "
                             "(default: bench/out/<workload name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out: keep the prompts it finished "
                             "(rows.partial.jsonl), run the rest (same workload, methods and "
                             "settings required)")
    parser.add_argument("--compile", action="store_true",
                        help="run our engine's methods (rest, restdecode, plain, restdecode-memory) "
                             "through a torch.compile'd forward; hf-* stay eager (transformers "
                             "backend only). Building the graphs takes minutes on a CPU, before "
                             "anything is timed")
    parser.add_argument("--memory-file", type=Path, default=None, metavar="FILE",
                        help="restdecode-memory starts from the outputs saved in FILE (if it "
                             "exists: e.g. an earlier run of another workload) and writes its "
                             "memory back to FILE at the end")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def default_out(workload: str) -> Path:
    """``bench/out/<name>``: the workload's name, or the prompts file's stem."""
    if workload.startswith("prompts:"):
        return Path("bench", "out", Path(workload.removeprefix("prompts:")).stem)
    return Path("bench", "out", workload)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, write the outputs, print the table and where the plots are."""
    from restdecode.benchmark import BenchConfig, run_benchmark
    from restdecode.benchmark.report import summary_table
    from restdecode.errors import RestdecodeError

    if args.max_new_tokens < 1:
        raise RestdecodeError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    methods = None if args.methods is None else _method_list(args.methods)
    if args.datastore is not None and not args.datastore.is_file():
        raise RestdecodeError(f"datastore {args.datastore} does not exist")
    outcome = run_benchmark(BenchConfig(
        workload=args.workload, out=args.out or default_out(args.workload), model=args.model, limit=args.limit,
        max_new_tokens=args.max_new_tokens, methods=methods, turns=args.turns,
        datastore=args.datastore, progress=not args.no_progress, resume=args.resume,
        compile=args.compile, memory_file=args.memory_file, backend=args.backend,
        **draft_model_options(args)))
    print(summary_table(outcome.document))
    print()
    print(f"results: {outcome.results}")
    print(f"report:  {outcome.report}")
    print("plots:   " + ", ".join(str(path) for path in outcome.plots))
    return 0


def _method_list(text: str) -> list[str]:
    """The method names of ``--methods``: not empty, none twice."""
    from restdecode.errors import RestdecodeError

    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise RestdecodeError("--methods is empty")
    if len(set(methods)) != len(methods):
        raise RestdecodeError(f"--methods names a method twice: {text}")
    return methods

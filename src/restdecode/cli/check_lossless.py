"""Check that speculative greedy decoding is token-identical to plain greedy decoding.

For every prompt, our greedy output (drafting from --datastore merged with the context; context
only without --datastore; with --draft-model, that model's drafts merged in too) is compared
with the backend's own plain greedy decoding: transformers'
model.generate(do_sample=False), or llama.cpp's own generation loop (llama-cpp-python's
Llama.generate) on --backend llamacpp. For a prompt that differs, the first differing position
and the gap between the model's two best logits there, in plain one-token-at-a-time decoding,
are shown: a gap near 0 is a numerical near-tie, not a logic error.

Verifying a tree evaluates several tokens in one batch, and a batch may round differently from
one-token steps: on quantized GGUF files llama.cpp's batched kernels move logits by up to ~0.2
(measured here on SmolLM2 Q4_1), flipping near-ties. --tie-margin G accepts a difference whose
top-2 gap is below G; the exit status is 0 when every output is identical or differs only at
such near-ties. f32 weights should need no margin.

examples:
  restdecode check-lossless --model smollm2-135m-instruct --prompts mtbench --limit 5
  restdecode check-lossless --model smollm2-135m-instruct --datastore sharegpt.rds \\
      --prompts prompts:my.jsonl --max-new-tokens 64 --json
  restdecode check-lossless --backend llamacpp --model smollm2-135m-instruct:f32 --limit 10
  restdecode check-lossless --backend llamacpp --tie-margin 0.25 --limit 10
  restdecode check-lossless --backend transformers --batch-size 8 --limit 16
  restdecode check-lossless --model qwen2.5-coder-1.5b-instruct \\
      --draft-model qwen2.5-coder-0.5b-instruct --prompts humaneval --limit 5
"""

from __future__ import annotations

import argparse
import json
import sys

from restdecode.cli.common import add_decoding_arguments, add_model_argument, engine_from_args


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``check-lossless`` arguments to ``parser``."""
    add_model_argument(parser)
    parser.add_argument("--datastore", help="datastore file to draft from (default: context drafting only)")
    parser.add_argument("--prompts", default="mtbench",
                        help="mtbench, humaneval or prompts:PATH (JSONL) (default: mtbench)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    add_decoding_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, metavar="N",
                        help="decode ours N prompts at a time as rows of one batch (one "
                             "verification forward per step, rows joining as others finish; "
                             "transformers backend), each row checked against plain greedy "
                             "alone (default: 1)")
    parser.add_argument("--tie-margin", type=float, default=0.0, metavar="G",
                        help="count a difference as a numerical near-tie when the plain top-2 "
                             "logit gap at its first position is below G (default: 0, every "
                             "difference fails)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every output is identical, 1 otherwise."""
    from tqdm import tqdm

    from restdecode.errors import OptionsError
    from restdecode.options import GenerationOptions
    from restdecode.workloads import load_workload

    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    if args.batch_size < 1:
        raise OptionsError(f"--batch-size must be at least 1, got {args.batch_size}")
    prompts = load_workload(args.prompts, limit=args.limit)
    engine = engine_from_args(args)
    if args.batch_size > 1:
        engine.check_batched_drafting()
    reference = reference_method(engine)
    ours = batched_outputs(engine, prompts, options, args.batch_size) if args.batch_size > 1 else {}
    differing, steps, tokens = [], 0, 0
    for prompt in tqdm(prompts, desc="check-lossless", unit="prompt", file=sys.stderr):
        outcome = compare_one(engine, reference, prompt, options, ours.get(prompt.id))
        steps += outcome.pop("steps")
        tokens += outcome.pop("decoded_tokens")
        if outcome["first_difference"] is not None:
            differing.append(outcome)
    near_ties = [d["id"] for d in differing if d["top2_logit_gap"] < args.tie_margin]
    report = {
        "backend": engine.backend.name,
        "batch_size": args.batch_size,
        "identical": len(prompts) - len(differing),
        "total": len(prompts),
        "differing": [d["id"] for d in differing],
        "near_ties": near_ties,
        "tie_margin": args.tie_margin,
        "details": differing,
        "tokens_per_step": tokens / steps if steps else 0.0,
    }
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        batched = f", decoded {args.batch_size} at a time" if args.batch_size > 1 else ""
        print(f"{report['identical']}/{report['total']} outputs token-identical to plain greedy "
              f"on {report['backend']}{batched} ({report['tokens_per_step']:.2f} tokens/step)")
        for detail in differing:
            tie = " (near-tie)" if detail["id"] in near_ties else ""
            print(f"  {detail['id']}: first difference at token {detail['first_difference']}, "
                  f"top-2 logit gap there {detail['top2_logit_gap']:.3g}{tie}")
        if differing:
            print(f"{len(near_ties)}/{len(differing)} differences are near-ties "
                  f"(gap < {args.tie_margin:g})")
    return 0 if len(near_ties) == len(differing) else 1


def reference_method(engine):
    """The backend's own plain greedy decoding, as the benchmark runs it: ``hf-greedy``
    (``model.generate``) or ``llamacpp-greedy`` (llama-cpp-python's loop, one model load)."""
    from restdecode.benchmark.methods import HF_GREEDY, LLAMACPP_GREEDY, build_methods

    name = LLAMACPP_GREEDY if engine.backend.name == "llamacpp" else HF_GREEDY
    return build_methods([name], engine)[0]


def batched_outputs(engine, prompts, options, batch_size: int) -> dict:
    """Our greedy outputs, ``batch_size`` prompts decoding at a time as rows of one batch (each
    with a drafter of its own), by prompt id."""
    from restdecode.batch import BatchRequest, generate_batch
    from restdecode.decode import prompt_token_ids

    requests = [BatchRequest(input_ids=prompt_token_ids(engine.tokenizer, p.text, p.messages),
                             drafter=engine.new_drafter() if engine.drafter else None)
                for p in prompts]
    results = generate_batch(engine.model, engine.tokenizer, requests, options=options,
                             max_rows=batch_size, progress=True,
                             profile=engine.batch_profile if engine.plans_drafts else None)
    return {prompt.id: result for prompt, result in zip(prompts, results)}


def compare_one(engine, reference, prompt, options, ours=None) -> dict:
    """Our greedy output (``ours``, else generated now with ``engine``'s drafter) vs the
    ``reference`` method's for one workload prompt."""
    import torch

    from restdecode.decode import prompt_token_ids

    ids = prompt_token_ids(engine.tokenizer, prompt.text, prompt.messages)
    ours = ours if ours is not None else engine.generate(input_ids=ids, options=options)
    theirs = reference.generate(torch.tensor([ids]), options.max_new_tokens).token_ids
    first = first_difference(ours.token_ids, theirs)
    gap = (top2_logit_gap(engine.backend, ids, theirs[:first])
           if first is not None else None)
    return {"id": prompt.id, "first_difference": first, "top2_logit_gap": gap,
            "ours": ours.token_ids, "reference": theirs,
            "steps": ours.stats.steps, "decoded_tokens": sum(ours.stats.accepted_per_step)}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """First index where the sequences differ (a length difference counts); None if equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def top2_logit_gap(backend, prompt_ids: list[int], generated: list[int]) -> float:
    """Best minus second-best logit after ``prompt_ids + generated``, as plain decoding saw it:
    the prompt in one prefill, then one token per forward."""
    import torch

    from restdecode.drafting.tree import DraftTree

    plain_step = DraftTree.empty().compile(backend.device)
    with torch.inference_mode():
        session = backend.session()
        logits = session.prefill(prompt_ids)
        for token in generated:
            logits = session.verify(token, plain_step)[0]
            session.commit([0])
        top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])

"""Check that speculative greedy decoding is token-identical to plain greedy decoding.

For every prompt, our greedy output (drafting from --datastore merged with the context; context
only without --datastore) is compared with transformers' model.generate(do_sample=False). For a
prompt that differs, the first differing position and the gap between the model's two best
logits there are shown (a gap near 0 means a numerical near-tie, not a logic error).

examples:
  restdecode check-lossless --model smollm2-135m-instruct --prompts mtbench --limit 5
  restdecode check-lossless --model smollm2-135m-instruct --datastore sharegpt.rds \\
      --prompts prompts:my.jsonl --max-new-tokens 64 --json
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
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when every output is identical, 1 otherwise."""
    from tqdm import tqdm

    from restdecode.options import GenerationOptions
    from restdecode.workloads import load_workload

    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    prompts = load_workload(args.prompts, limit=args.limit)
    engine = engine_from_args(args)
    differing, steps, tokens = [], 0, 0
    for prompt in tqdm(prompts, desc="check-lossless", unit="prompt", file=sys.stderr):
        outcome = compare_one(engine, prompt, options)
        steps += outcome.pop("steps")
        tokens += outcome.pop("decoded_tokens")
        if outcome["first_difference"] is not None:
            differing.append(outcome)
    report = {
        "identical": len(prompts) - len(differing),
        "total": len(prompts),
        "differing": [d["id"] for d in differing],
        "details": differing,
        "tokens_per_step": tokens / steps if steps else 0.0,
    }
    if args.json:
        json.dump(report, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{report['identical']}/{report['total']} outputs token-identical to plain greedy "
              f"({report['tokens_per_step']:.2f} tokens/step)")
        for detail in differing:
            print(f"  {detail['id']}: first difference at token {detail['first_difference']}, "
                  f"top-2 logit gap there {detail['top2_logit_gap']:.3g}")
    return 0 if not differing else 1


def compare_one(engine, prompt, options) -> dict:
    """Our greedy output (``engine``'s drafter) vs ``model.generate(do_sample=False)`` for one
    workload prompt."""
    import torch

    from restdecode.compiled import eager
    from restdecode.decode import prompt_token_ids

    model, max_new_tokens = engine.model, options.max_new_tokens
    ids = prompt_token_ids(engine.tokenizer, prompt.text, prompt.messages)
    ours = engine.generate(input_ids=ids, options=options)
    with torch.inference_mode():
        tensor = torch.tensor([ids], device=model.device)
        reference = model.generate(tensor, attention_mask=torch.ones_like(tensor), do_sample=False,
                                   max_new_tokens=max_new_tokens)[0, len(ids):].tolist()
    first = first_difference(ours.token_ids, reference)
    gap = top2_logit_gap(eager(model), ids + reference[:first]) if first is not None else None
    return {"id": prompt.id, "first_difference": first, "top2_logit_gap": gap,
            "ours": ours.token_ids, "reference": reference,
            "steps": ours.stats.steps, "decoded_tokens": sum(ours.stats.accepted_per_step)}


def first_difference(a: list[int], b: list[int]) -> int | None:
    """First index where the sequences differ (a length difference counts); None if equal."""
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def top2_logit_gap(model, context: list[int]) -> float:
    """Best minus second-best logit after ``context`` (one plain forward)."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([context], device=model.device), logits_to_keep=1).logits[0, -1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])

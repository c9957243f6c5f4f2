"""Generate one completion with lossless speculative decoding.

The draft tree merges retrieval from a datastore (--datastore) with lookup in the context
(prompt + output so far); without --datastore, context drafting only; --no-draft decodes plainly.
The text goes to stdout as it is generated, statistics to stderr; --json prints one JSON object
(text, token_ids, stats) on stdout instead.

examples:
  restdecode generate --model smollm2-135m-instruct --prompt "def fib(n):"
  restdecode generate --model smollm2-135m-instruct --datastore sharegpt.rds \\
      --messages '[{"role": "user", "content": "Name three rivers."}]' --json
"""

from __future__ import annotations

import argparse
import json
import sys


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``generate`` arguments to ``parser``."""
    parser.add_argument("--model", required=True,
                        help="model asset name (e.g. smollm2-135m-instruct), GGUF file or HF directory")
    parser.add_argument("--datastore", help="datastore file (restdecode build-datastore) to draft from")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="raw prompt text (no chat template)")
    source.add_argument("--messages", help='chat messages as JSON: [{"role": ..., "content": ...}, ...]')
    add_decoding_arguments(parser)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--seed", type=int, help="random seed for sampling")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop once the output contains TEXT (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with check-lossless: length and drafting."""
    parser.add_argument("--max-new-tokens", type=int, default=128, help="default: 128")
    parser.add_argument("--budget", type=int, default=None,
                        help="verify a fixed draft tree of this many nodes every step (default: "
                             "size each step's tree by this machine's measured latency profile)")
    parser.add_argument("--no-draft", action="store_true", help="plain decoding, no speculation")
    add_compile_argument(parser)


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile``, shared by every command that decodes."""
    parser.add_argument("--compile", action="store_true",
                        help="verify drafts through a torch.compile'd forward: faster steps once "
                             "its graphs are built, which takes minutes on a CPU (pays off for "
                             "long runs only)")


def load_model(name: str, compile: bool = False):
    """Model and tokenizer; with ``compile``, the model wrapped for a compiled forward whose
    graphs are built before returning (it says so on stderr: it takes minutes on a CPU)."""
    from restdecode.models import load

    model, tokenizer = load(name)
    if compile:
        from restdecode.compiled import compile_forward
        from restdecode.verify import build_graphs

        print("compiling the model's forward (minutes on a CPU, once per process) ...",
              file=sys.stderr, flush=True)
        model = compile_forward(model)
        print(f"compiled in {build_graphs(model):.0f} s", file=sys.stderr, flush=True)
    return model, tokenizer


def build_drafter(model, tokenizer, datastore: str | None, *, budget: int | None = None,
                  no_draft: bool = False):
    """The default drafter (:func:`restdecode.drafting.default_drafter`) over the datastore at
    path ``datastore`` (context lookup only when None), or ``NoDrafter`` with ``no_draft``.

    Without ``budget``, trees are sized by the model's latency profile on this machine
    (:func:`restdecode.latency.profile_for`: measured once, about a minute, then cached).
    """
    from restdecode.drafting import NoDrafter, default_drafter

    if no_draft:
        return NoDrafter()
    from restdecode.datastore import Datastore

    store = Datastore.open(datastore, tokenizer) if datastore is not None else None
    if budget is not None:
        return default_drafter(store, budget=budget)
    from restdecode.latency import profile_for

    return default_drafter(store, profile=profile_for(model))


def parse_messages(text: str) -> list[dict]:
    """``--messages`` JSON, checked to be a list of role/content objects."""
    from restdecode.errors import DecodingError

    try:
        messages = json.loads(text)
    except json.JSONDecodeError as error:
        raise DecodingError(f"--messages is not valid JSON ({error.msg})") from None
    if not (isinstance(messages, list) and messages
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)):
        raise DecodingError('--messages must be a JSON list of {"role": ..., "content": ...}')
    return messages


def format_stats(stats) -> str:
    """A short human summary of :class:`GenerationStats`."""
    decode = stats.time_decode or 1e-9
    parts = [
        f"{stats.new_tokens} tokens in {stats.steps} steps ({stats.tokens_per_step:.2f} tokens/step)",
        f"decode {stats.decode_tokens_per_s:.1f} tok/s, end to end {stats.end_to_end_tokens_per_s:.1f} tok/s",
        f"prefill {stats.time_prefill * 1000:.0f} ms",
        "decode time: " + ", ".join(
            f"{name} {100 * value / decode:.1f}%"
            for name, value in (("draft", stats.time_draft), ("verify", stats.time_verify),
                                ("accept+commit", stats.time_accept_commit),
                                ("other", stats.time_other))),
        f"stop: {stats.stop_reason}",
    ]
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Load the model, generate, print text (stdout) and stats (stderr)."""
    from restdecode.decode import stream

    messages = parse_messages(args.messages) if args.messages else None
    model, tokenizer = load_model(args.model, args.compile)
    drafter = build_drafter(model, tokenizer, args.datastore, budget=args.budget, no_draft=args.no_draft)
    events = stream(model, tokenizer, args.prompt, messages=messages, drafter=drafter,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_p=args.top_p, top_k=args.top_k, stop=args.stop or None, seed=args.seed)
    while True:
        try:
            piece = next(events)
        except StopIteration as done:
            result = done.value
            break
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    if args.json:
        json.dump({"text": result.text, "token_ids": result.token_ids,
                   "stats": result.stats.to_dict()}, sys.stdout)
    sys.stdout.write("\n")
    if not args.json:
        print(format_stats(result.stats), file=sys.stderr)
    return 0

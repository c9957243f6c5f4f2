"""Generate one completion with lossless speculative decoding.

The draft tree merges retrieval from a datastore (--datastore) with lookup in the context
(prompt + output so far); without --datastore, context drafting only; --draft-model adds a smaller
model's drafts (same tokenizer) to the tree; --no-draft decodes plainly.
The text goes to stdout as it is generated, statistics to stderr; --json prints one JSON object
(text, token_ids, stats) on stdout instead.

examples:
  restdecode generate --model smollm2-135m-instruct --prompt "def fib(n):"
  restdecode generate --model smollm2-135m-instruct --datastore sharegpt.rds \\
      --messages '[{"role": "user", "content": "Name three rivers."}]' --json
  restdecode generate --model qwen2.5-coder-1.5b-instruct \\
      --draft-model qwen2.5-coder-0.5b-instruct --prompt "def quicksort(items):"
"""

from __future__ import annotations

import argparse
import json
import sys

from restdecode.cli.common import (add_decoding_arguments, add_model_argument,
                                   add_sampling_arguments, engine_from_args, options_from_args)


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``generate`` arguments to ``parser``."""
    add_model_argument(parser)
    parser.add_argument("--datastore", help="datastore file (restdecode build-datastore) to draft from")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="raw prompt text (no chat template)")
    source.add_argument("--messages", help='chat messages as JSON: [{"role": ..., "content": ...}, ...]')
    add_decoding_arguments(parser)
    add_sampling_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def parse_messages(text: str) -> list[dict]:
    """``--messages`` JSON, checked to be a list of role/content objects with text content."""
    from restdecode.errors import OptionsError
    from restdecode.options import check_messages

    try:
        messages = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "nested too deeply"
        raise OptionsError(f"--messages is not valid JSON ({reason})") from None
    try:
        return check_messages(messages)
    except OptionsError as error:
        raise OptionsError(f"--messages: {error}") from None


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
    options = options_from_args(args)
    messages = parse_messages(args.messages) if args.messages else None
    engine = engine_from_args(args)
    pieces = engine.stream(args.prompt, messages=messages, options=options)
    for piece in pieces:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    result = pieces.result
    if args.json:
        json.dump({"text": result.text, "token_ids": result.token_ids,
                   "stats": result.stats.to_dict()}, sys.stdout)
    sys.stdout.write("\n")
    if not args.json:
        print(format_stats(result.stats), file=sys.stderr)
    return 0

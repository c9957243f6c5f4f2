"""Interactive streaming chat with speculative decoding (the model's chat template, full history).

Type a message and press Enter; the reply streams as it is decoded. After each reply one line
reports: new tokens, tokens/s, mean tokens accepted per model step, and a speedup estimate
against plain decoding. The estimate divides the time plain decoding would have needed (new
tokens x one plain step, measured once at startup with our loop and no drafter, on a short
prompt) by the reply's measured decoding time (after the prefill).

Ctrl-C stops the current reply (the partial reply stays in the history); Ctrl-D (end of input)
or /exit quits; /reset clears the history. Without a terminal (a pipe), one line of stdin is one
message.

examples:
  restdecode chat
  restdecode chat --datastore ~/.cache/restdecode/datastores/sharegpt-smollm2.rds --temperature 0.7
  printf 'Hello!\\nTell me a joke.\\n' | restdecode chat
  restdecode chat --model qwen2.5-coder-1.5b-instruct --draft-model qwen2.5-coder-0.5b-instruct
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

from restdecode.cli.common import (add_decoding_arguments, add_model_argument,
                                   add_sampling_arguments, engine_from_args, options_from_args)

PLAIN_PROBE_TOKENS = 8
EXIT_COMMANDS = ("/exit", "/quit")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the chat arguments."""
    add_model_argument(parser)
    parser.add_argument("--datastore", type=Path, default=None, metavar="FILE",
                        help="datastore to draft from (default: the one `make demo` builds for "
                             "the default model, if present; else context drafting only)")
    add_decoding_arguments(parser, max_new_tokens=512)
    add_sampling_arguments(parser)
    parser.add_argument("--system", default=None, metavar="TEXT", help="optional system message")
    parser.add_argument("--memory", choices=("persist", "session", "off"), default="persist",
                        help="drafts also come from the model's earlier replies: 'persist' "
                             "(default) keeps them across sessions in --memory-file (the replies' "
                             "token ids only: no prompt, no text); 'session' only within this "
                             "session; 'off' not at all")
    parser.add_argument("--memory-file", type=Path, default=None, metavar="FILE",
                        help="where --memory persist keeps the replies (default: "
                             "$RESTDECODE_HOME/memory/<model>-<hash>.npz)")


@dataclass
class ReplyStats:
    """What the line after a reply reports."""

    new_tokens: int
    decode_s: float
    total_s: float
    steps: int
    tokens_per_step: float


def run(args: argparse.Namespace) -> int:
    """Load the model and drafter, then chat until EOF or /exit."""
    from restdecode.engine import default_datastore, default_memory_file
    from restdecode.errors import RestdecodeError

    options = options_from_args(args)
    if options.max_new_tokens < 1:
        raise RestdecodeError(f"--max-new-tokens must be at least 1, got {options.max_new_tokens}")
    store_path = args.datastore or default_datastore(args.model)
    # The memory carries replies over to the next ones (and, persisted, to later sessions).
    memory_file = (args.memory_file or default_memory_file(args.model)
                   if args.memory == "persist" else None)
    engine = engine_from_args(args, datastore=store_path, memory=args.memory != "off",
                              memory_file=memory_file)
    if not getattr(engine.tokenizer, "chat_template", None):
        raise RestdecodeError(f"model {args.model} has no chat template: use `restdecode generate`")
    interactive = sys.stdin.isatty()
    plain_step_s = measure_plain_step(engine)
    _info(f"model {args.model}; drafter: {_describe(engine.drafter)}"
          + (f" (datastore {store_path})" if store_path else "")
          + f"; plain step {plain_step_s * 1000:.0f} ms"
          + (f"; memory: {engine.remembered_at_start} earlier replies from {memory_file}"
             if memory_file else f"; memory: {args.memory}")
          + ("; Ctrl-C stops a reply, Ctrl-D or /exit quits" if interactive else ""))
    session = ChatSession(engine, options, plain_step_s=plain_step_s, system=args.system)
    for message in read_messages(sys.stdin, interactive):
        if message in EXIT_COMMANDS:
            break
        if message == "/reset":
            session.reset()
            _info("history cleared")
            continue
        session.reply(message, sys.stdout, prefix="bot> " if interactive else "")
        engine.save_memory()  # after every reply: a crash or Ctrl-C loses none of them
    return 0


def _describe(drafter) -> str:
    planned = getattr(drafter, "drafter", None)  # a PlannedDrafter wraps the real sources
    if planned is not None:
        return f"{_describe(planned)}, trees sized by the latency profile"
    parts = getattr(drafter, "drafters", None)
    if parts:
        return " + ".join(type(part).__name__ for part in parts)
    return type(drafter).__name__


def _info(message: str) -> None:
    print(f"[{message}]", file=sys.stderr, flush=True)


def measure_plain_step(engine) -> float:
    """Seconds per plain decoding step of our loop (no drafter) on a short chat prompt.

    Two generations of the same prompt (1 token, then ``PLAIN_PROBE_TOKENS``): the difference
    divided by the extra steps, so the prefill cancels out. A first, untimed one warms up.
    """
    from restdecode.drafting import NoDrafter

    messages = [{"role": "user", "content": "Hello! How are you?"}]

    def timed(tokens: int) -> tuple[float, int]:
        start = time.perf_counter()
        result = engine.generate(messages=messages, drafter=NoDrafter(), max_new_tokens=tokens)
        return time.perf_counter() - start, result.stats.steps

    timed(2)
    one_s, _ = timed(1)
    many_s, steps = timed(PLAIN_PROBE_TOKENS)
    return max(many_s - one_s, 1e-6) / max(steps, 1)


def read_messages(stream: TextIO, interactive: bool) -> Iterator[str]:
    """Non-empty stripped input lines until EOF; Ctrl-C at the prompt just asks again."""
    while True:
        try:
            line = input("you> ") if interactive else stream.readline()
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\n(Ctrl-D or /exit quits)", file=sys.stderr)
            continue
        if not interactive and line == "":
            break
        if line.strip():
            yield line.strip()
    if interactive:
        print(file=sys.stderr)


class ChatSession:
    """The conversation so far, and how to extend it by one streamed reply."""

    def __init__(self, engine, options, *, plain_step_s: float, system: str | None = None) -> None:
        self.engine = engine
        self.options = options
        self.plain_step_s = plain_step_s
        self.system = system
        self.history: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, message: str, out: TextIO, prefix: str = "") -> ReplyStats | None:
        """Stream the reply to ``message`` into ``out``, then the stats line; None if interrupted."""
        self.history.append({"role": "user", "content": message})
        out.write(prefix)
        pieces: list[str] = []
        events = self.engine.stream(messages=self.history, options=self.options)
        start = time.perf_counter()
        try:
            for piece in events:
                _write(out, piece, pieces)
        except KeyboardInterrupt:
            events.close()
            out.write(" [stopped]\n")
            out.flush()
            self.history.append({"role": "assistant", "content": "".join(pieces)})
            return None
        total_s = time.perf_counter() - start
        result = events.result
        self.history.append({"role": "assistant", "content": result.text})
        stats = reply_stats(result.stats, total_s)
        out.write("\n" + stats_line(stats, self.plain_step_s) + "\n")
        out.flush()
        return stats


def _write(out: TextIO, piece: str, pieces: list[str]) -> None:
    out.write(piece)
    out.flush()
    pieces.append(piece)  # after the write: the history keeps what the user saw


def reply_stats(stats, total_s: float) -> ReplyStats:
    """The reply's numbers from the engine's stats (steps exclude the prefill forward)."""
    steps = stats.steps
    return ReplyStats(new_tokens=stats.new_tokens, decode_s=stats.time_decode, total_s=total_s,
                      steps=steps, tokens_per_step=stats.tokens_per_step if steps else 1.0)


def stats_line(stats: ReplyStats, plain_step_s: float) -> str:
    """``[N tokens, X tok/s, A accepted/step, ~S x vs plain (...)]``.

    Tokens per second is end to end (prefill included). The speedup compares decoding only:
    the decoding steps' tokens x the measured plain step time / the measured decoding time.
    """
    tokens_per_s = stats.new_tokens / stats.total_s if stats.total_s > 0 else 0.0
    decoded = max(stats.new_tokens - 1, 0)  # the first token comes from the prefill
    speedup = decoded * plain_step_s / stats.decode_s if stats.decode_s > 0 and decoded else None
    estimate = (f"~{speedup:.2f}x vs plain decoding (measured plain step "
                f"{plain_step_s * 1000:.0f} ms)" if speedup is not None else "speedup n/a")
    return (f"[{stats.new_tokens} tokens, {tokens_per_s:.1f} tok/s, "
            f"{stats.tokens_per_step:.2f} accepted/step, {estimate}]")

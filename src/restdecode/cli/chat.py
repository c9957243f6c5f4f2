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
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

from restdecode.cli.generate import add_compile_argument

DEFAULT_MODEL = "smollm2-135m-instruct"
PLAIN_PROBE_TOKENS = 8
EXIT_COMMANDS = ("/exit", "/quit")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the chat arguments."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model asset name, .gguf file or Hugging Face directory "
                             f"(default: {DEFAULT_MODEL})")
    parser.add_argument("--datastore", type=Path, default=None, metavar="FILE",
                        help="datastore to draft from (default: the one `make demo` builds for "
                             "the default model, if present; else context drafting only)")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="0 = greedy (default); > 0 samples, losslessly")
    parser.add_argument("--max-new-tokens", type=int, default=512, metavar="N",
                        help="longest reply in tokens (default: 512)")
    parser.add_argument("--system", default=None, metavar="TEXT", help="optional system message")
    add_compile_argument(parser)


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
    from restdecode.errors import RestdecodeError

    if args.max_new_tokens < 1:
        raise RestdecodeError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise RestdecodeError(f"--temperature must be >= 0, got {args.temperature}")
    model, tokenizer, drafter, store = _load(args)
    interactive = sys.stdin.isatty()
    plain_step_s = measure_plain_step(model, tokenizer)
    _info(f"model {args.model}; drafter: {_describe(drafter)}"
          + (f" (datastore {store})" if store else "")
          + f"; plain step {plain_step_s * 1000:.0f} ms"
          + ("; Ctrl-C stops a reply, Ctrl-D or /exit quits" if interactive else ""))
    session = ChatSession(model, tokenizer, drafter, temperature=args.temperature,
                          max_new_tokens=args.max_new_tokens, plain_step_s=plain_step_s,
                          system=args.system)
    for message in read_messages(sys.stdin, interactive):
        if message in EXIT_COMMANDS:
            break
        if message == "/reset":
            session.reset()
            _info("history cleared")
            continue
        session.reply(message, sys.stdout, prefix="bot> " if interactive else "")
    return 0


def _load(args):
    from restdecode.benchmark import default_datastore
    from restdecode.benchmark.methods import restdecode_drafter
    from restdecode.cli.generate import load_model
    from restdecode.errors import RestdecodeError

    store_path = args.datastore or default_datastore(args.model)
    if store_path is not None and not Path(store_path).is_file():
        raise RestdecodeError(f"datastore {store_path} does not exist")
    model, tokenizer = load_model(args.model, args.compile)
    if not getattr(tokenizer, "chat_template", None):
        raise RestdecodeError(f"model {args.model} has no chat template: use `restdecode generate`")
    datastore = None
    if store_path is not None:
        from restdecode.datastore import Datastore

        datastore = Datastore.open(store_path, tokenizer)
    from restdecode.drafting import MemoryDrafter
    from restdecode.drafting.defaults import CONTEXT_SPAN
    from restdecode.latency import profile_for

    # The memory carries this session's replies over to the next ones.
    drafter = restdecode_drafter(datastore, profile_for(model), MemoryDrafter(span=CONTEXT_SPAN))
    return model, tokenizer, drafter, store_path


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


def measure_plain_step(model, tokenizer) -> float:
    """Seconds per plain decoding step of our loop (no drafter) on a short chat prompt.

    Two generations of the same prompt (1 token, then ``PLAIN_PROBE_TOKENS``): the difference
    divided by the extra steps, so the prefill cancels out. A first, untimed one warms up.
    """
    from restdecode.decode import generate

    messages = [{"role": "user", "content": "Hello! How are you?"}]

    def timed(tokens: int) -> tuple[float, int]:
        start = time.perf_counter()
        result = generate(model, tokenizer, messages=messages, max_new_tokens=tokens)
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

    def __init__(self, model, tokenizer, drafter, *, temperature: float, max_new_tokens: int,
                 plain_step_s: float, system: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.drafter = drafter
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.plain_step_s = plain_step_s
        self.system = system
        self.history: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.history = [{"role": "system", "content": self.system}] if self.system else []

    def reply(self, message: str, out: TextIO, prefix: str = "") -> ReplyStats | None:
        """Stream the reply to ``message`` into ``out``, then the stats line; None if interrupted."""
        from restdecode.decode import stream

        self.history.append({"role": "user", "content": message})
        out.write(prefix)
        pieces: list[str] = []
        events = stream(self.model, self.tokenizer, messages=self.history, drafter=self.drafter,
                        max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        start = time.perf_counter()
        try:
            result = consume(events, lambda piece: _write(out, piece, pieces))
        except KeyboardInterrupt:
            events.close()
            out.write(" [stopped]\n")
            out.flush()
            self.history.append({"role": "assistant", "content": "".join(pieces)})
            return None
        total_s = time.perf_counter() - start
        self.history.append({"role": "assistant", "content": result.text})
        stats = reply_stats(result.stats, total_s)
        out.write("\n" + stats_line(stats, self.plain_step_s) + "\n")
        out.flush()
        return stats


def consume(events: Iterator[str], write: Callable[[str], None]):
    """Feed every piece of a ``stream()`` generator to ``write``; return its GenerationResult."""
    while True:
        try:
            piece = next(events)
        except StopIteration as done:
            return done.value
        write(piece)


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

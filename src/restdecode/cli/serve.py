"""Serve the model over OpenAI's HTTP API, with lossless speculative decoding.

Routes: POST /v1/chat/completions and /v1/completions (streaming with "stream": true),
GET /v1/models, /health, and /metrics (Prometheus). Any OpenAI client works: point its base URL
at http://HOST:PORT/v1. Greedy answers (temperature 0) are token-identical to plain decoding;
sampled ones keep the model's exact distribution.

Auth: with --api-key (repeatable), RESTDECODE_API_KEY or --api-keys-file, every /v1 request
needs "Authorization: Bearer KEY"; without any key the server is open (it binds 127.0.0.1 by
default). /health and /metrics never need a key.

Learned memory (--memory DIR, off by default): every finished request (prompt + answer token
ids) is appended to a checksummed log in DIR and drafts for later requests. Off by default,
unlike chat's: it stores other people's prompts, and a memory that learns between requests
makes a sampled answer depend on earlier requests too (a seed no longer reproduces it). With several keys each key's tenant
drafts only from its own requests (--memory-scope per-key, then the default): a tenant could
otherwise infer from the speed of its answers what another tenant generated.

examples:
  restdecode serve
  restdecode serve --port 8080 --api-key sk-local --memory ~/.cache/restdecode/serve-memory
  restdecode serve --model qwen2.5-coder-1.5b-instruct --draft-model qwen2.5-coder-0.5b-instruct
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}]}'
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from restdecode.cli.common import add_compile_argument, add_model_argument, draft_model_options

ENV_API_KEY = "RESTDECODE_API_KEY"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the serve arguments."""
    add_model_argument(parser)
    parser.add_argument("--datastore", type=Path, default=None, metavar="FILE",
                        help="datastore to draft from (default: the one `make demo` builds for "
                             "the default model, if present; else context drafting only)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000,
                        help="port to bind (default: 8000; 0 picks a free one)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="the model id clients send and /v1/models lists (default: --model)")
    parser.add_argument("--api-key", action="append", default=[], metavar="KEY",
                        help=f"require this key (repeatable; default: ${ENV_API_KEY} if set)")
    parser.add_argument("--api-keys-file", type=Path, default=None, metavar="FILE",
                        help="keys, one per line: KEY [TENANT] ('#' starts a comment)")
    parser.add_argument("--memory", type=Path, default=None, metavar="DIR",
                        help="learn from served requests: log them in DIR and draft from them "
                             "(default: off)")
    parser.add_argument("--memory-scope", choices=("global", "per-key"), default=None,
                        help="whose requests draft for whom: per-key keeps each key's tenant "
                             "apart (default: per-key with several keys, else global)")
    parser.add_argument("--compact-tokens", type=int, default=20_000, metavar="N",
                        help="compact a tenant's memory into a suffix-array store once N new "
                             "tokens arrived (default: 20000)")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="requests that may wait; more get 429 with Retry-After "
                             "(default: 64)")
    parser.add_argument("--max-batch", type=int, default=1, metavar="N",
                        help="decode up to N requests at once as rows of one batch, verified "
                             "together in one forward per step (default: 1, one request at a "
                             "time). On llama.cpp the rows share one context of --context cells: "
                             "a request starts when its prompt and max_tokens fit beside the "
                             "running ones")
    parser.add_argument("--context", type=int, default=None, metavar="CELLS",
                        help="llama.cpp: the context's KV cells, shared by all rows of a batch "
                             "(default: 4096 per request of --max-batch)")
    parser.add_argument("--budget", type=int, default=None, metavar="NODES",
                        help="verify a fixed draft tree of this many nodes every step (default: "
                             "size each step's tree by this machine's measured latency profile)")
    parser.add_argument("--no-speculation", action="store_true",
                        help="plain decoding (the baseline to compare against)")
    add_compile_argument(parser)


def _context_cells(args: argparse.Namespace) -> int | None:
    """The llama.cpp context's cells: --context, else a default context per batched row (None
    on transformers, or for one request at a time: the backend's own default)."""
    from restdecode.backends import resolve_backend
    from restdecode.backends.llamacpp import DEFAULT_CONTEXT

    if resolve_backend(args.backend, args.model, compile=args.compile) != "llamacpp":
        return args.context  # Engine.load refuses a --context here
    if args.context is not None or args.max_batch == 1:
        return args.context
    return DEFAULT_CONTEXT * args.max_batch


def run(args: argparse.Namespace) -> int:
    """Load the engine, then serve until interrupted."""
    import uvicorn

    from restdecode.engine import Engine, default_datastore
    from restdecode.errors import OptionsError
    from restdecode.server.app import ServerConfig, create_app
    from restdecode.server.metrics import ServerMetrics
    from restdecode.server.scheduler import Scheduler

    keys = read_keys(args.api_key or _env_keys(), args.api_keys_file)
    if args.max_queue < 0 or args.compact_tokens < 1 or args.max_batch < 1:
        raise OptionsError("--max-queue must be >= 0, --compact-tokens and --max-batch >= 1")
    if args.compile and args.max_batch > 1:
        raise OptionsError("--compile applies to one request at a time; batched decoding "
                           "(--max-batch > 1) runs the model eagerly")
    if args.context is not None and args.context < 1:
        raise OptionsError("--context must be >= 1")
    scope = args.memory_scope or ("per-key" if len(set(keys.values())) > 1 else "global")
    listener = _bind(args.host, args.port)  # before minutes of loading: a taken port fails now
    store = args.datastore or default_datastore(args.model)
    engine = Engine.load(args.model, datastore=store, backend=args.backend, compile=args.compile,
                         draft=not args.no_speculation, budget=args.budget,
                         say=lambda message: print(message, file=sys.stderr, flush=True),
                         context=_context_cells(args), **draft_model_options(args))
    if args.max_batch > 1:
        engine.check_batched_drafting()
    if engine.drafter is not None and args.budget is None:
        engine.profile  # measured now (once per model and machine), not in the first request
    memory = _open_memory(engine, args.memory, args.compact_tokens)
    scheduler = Scheduler(engine, speculate=not args.no_speculation, memory=memory,
                          max_queue=args.max_queue, max_active=args.max_batch)
    metrics = ServerMetrics(lambda: scheduler.queue_depth, lambda: scheduler.active)
    scheduler.on_finish = lambda job, result, outcome: (
        metrics.finished(result) if outcome == "finished"
        else metrics.requests.labels(outcome).inc())
    config = ServerConfig(model_name=args.served_model_name or args.model, keys=keys,
                          per_key_memory=scope == "per-key")
    app = create_app(engine, scheduler, config, metrics)
    host, port = listener.getsockname()[:2]
    print(f"restdecode serve: http://{host}:{port}/v1 | model {config.model_name} on "
          f"{engine.backend.name} | datastore {store or 'none'} | draft model "
          f"{engine.draft_name or 'none'} | speculation "
          f"{'off' if args.no_speculation else 'on'} | batch {args.max_batch} | auth "
          f"{f'on ({len(keys)} keys)' if keys else 'off'} | memory "
          f"{f'{args.memory} ({scope})' if memory else 'off'}", file=sys.stderr, flush=True)
    scheduler.start()
    try:
        uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5,
                                      )).run(sockets=[listener])
    finally:
        scheduler.stop()
        if memory is not None:
            memory.close()
    return 0


def read_keys(given: list[str], keys_file: Path | None) -> dict[str, str]:
    """API key -> tenant name, from ``--api-key`` values and the keys file."""
    from restdecode.errors import OptionsError
    from restdecode.server.app import key_tenant

    keys = {key: key_tenant(key) for key in given if key}
    if keys_file is None:
        return keys
    try:
        lines = keys_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise OptionsError(f"cannot read --api-keys-file {keys_file}: {error}") from None
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise OptionsError(f"{keys_file}:{number}: expected 'KEY [TENANT]'")
        keys[fields[0]] = fields[1] if len(fields) == 2 else key_tenant(fields[0])
    return keys


def _env_keys() -> list[str]:
    key = os.environ.get(ENV_API_KEY, "")
    return [key] if key else []


def _bind(host: str, port: int) -> socket.socket:
    from restdecode.errors import OptionsError

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
        # The protocol number matters: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
        # on sockets that say they are TCP; without it each small SSE chunk waits ~40 ms.
        listener = socket.socket(family, kind, protocol)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
    except OSError as error:
        raise OptionsError(f"cannot listen on {host}:{port}: {error}") from None
    listener.listen(128)
    return listener


def _open_memory(engine, directory: Path | None, compact_tokens: int):
    if directory is None or engine.drafter is None:
        return None
    from restdecode.datastore.vocab import tokenizer_fingerprint
    from restdecode.server.memory import LearnedMemory

    return LearnedMemory(directory.expanduser(), vocab_size=engine.backend.vocab_size,
                         key=f"tokenizer {tokenizer_fingerprint(engine.tokenizer)}",
                         compact_tokens=compact_tokens, say=engine.say)

